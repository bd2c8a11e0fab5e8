// JSON views the API and the event stream share.
//
// Thread-safety: pure functions.
#pragma once

#include <boost/json/object.hpp>

#include "poolkeeper/stats.h"

namespace poolkeeper::server {

// A pool's statistics as the API shows them (GET /v1/pools/{pool}, the
// pool_status event).
boost::json::object stats_json(const PoolStats& st);

}  // namespace poolkeeper::server
