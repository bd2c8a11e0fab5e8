#include "monitor/event_bus.h"

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>

#include "runtime/log.h"
#include "runtime/text.h"

namespace poolkeeper::monitor {
namespace {

namespace json = boost::json;

bool wants_reason(core::EventType t) {
  return t == core::EventType::kSessionClosing || t == core::EventType::kSessionClosed ||
         t == core::EventType::kSessionOverLimit;
}

std::string head(std::uint64_t id, std::string_view type, std::string_view pool, WallTime at) {
  json::object o;
  if (id != 0) o["id"] = id;
  o["type"] = type;
  o["pool"] = pool;
  o["at"] = runtime::utc_text(at);
  return json::serialize(o);
}

// `{"id":..,"at":".."}` plus `fields` (members, may be empty).
std::string compose(std::string head_json, std::string_view fields) {
  if (fields.empty()) return head_json;
  head_json.pop_back();  // '}'
  head_json += ',';
  head_json += fields;
  head_json += '}';
  return head_json;
}

// The event as a listener with `filter` may see it.
LiveEvent visible_to(const LiveEvent& e, const EventFilter& filter) {
  return LiveEvent{e.id, e.type, e.pool, e.json_for(filter), e.audience};
}

}  // namespace

const std::vector<std::string>& event_types() {
  static const std::vector<std::string> types = [] {
    std::vector<std::string> t;
    for (int i = 0; i <= static_cast<int>(core::EventType::kAutoscaleSet); ++i) {
      t.emplace_back(core::to_string(static_cast<core::EventType>(i)));
    }
    for (const char* extra : {"pool_status", "alert_firing", "alert_resolved", "events_lost"}) t.emplace_back(extra);
    return t;
  }();
  return types;
}

const std::string& LiveEvent::json_for(const EventFilter& filter) const {
  return redacted.empty() || filter.sees_owner(owner) ? json : redacted;
}

bool EventFilter::matches(std::string_view pool, std::string_view type, std::string_view audience) const {
  if (!audience.empty() && !admin && audience != "tenant:" + tenant) return false;
  if (!pools.empty() && !pool.empty() && std::find(pools.begin(), pools.end(), pool) == pools.end()) {
    return false;
  }
  if (types.empty() || type == "events_lost") return true;
  return std::any_of(types.begin(), types.end(), [&](const std::string& t) {
    if (!t.empty() && t.back() == '*') return type.starts_with(std::string_view(t).substr(0, t.size() - 1));
    return t == type;
  });
}

std::expected<EventFilter, std::string> parse_filter(std::string_view pools, std::string_view types) {
  auto split = [](std::string_view csv) {
    std::vector<std::string> out;
    while (!csv.empty()) {
      const auto comma = csv.find(',');
      std::string_view item = csv.substr(0, comma);
      if (!item.empty()) out.emplace_back(item);
      if (comma == std::string_view::npos) break;
      csv.remove_prefix(comma + 1);
    }
    return out;
  };
  EventFilter f{.pools = split(pools), .types = split(types)};
  const auto& known = event_types();
  for (const std::string& t : f.types) {
    const bool prefix = t.back() == '*';
    const std::string_view stem = prefix ? std::string_view(t).substr(0, t.size() - 1) : std::string_view(t);
    const bool found = std::any_of(known.begin(), known.end(), [&](const std::string& k) {
      return prefix ? std::string_view(k).starts_with(stem) : k == stem;
    });
    if (!found) {
      std::string all;
      for (const std::string& k : known) all += (all.empty() ? "" : ", ") + k;
      return std::unexpected("unknown event type \"" + t + "\" (known: " + all + ")");
    }
  }
  return f;
}

std::vector<LiveEvent> Subscription::take() {
  std::lock_guard lock(mu_);
  std::vector<LiveEvent> out;
  out.swap(pending_);
  return out;
}

std::optional<std::string> Subscription::ended() const {
  std::lock_guard lock(mu_);
  return ended_;
}

void Subscription::set_waker(std::function<void()> waker) {
  std::lock_guard lock(mu_);
  waker_ = std::move(waker);
}

std::function<void()> Subscription::waker() const {
  std::lock_guard lock(mu_);
  return waker_;
}

bool Subscription::push(const LiveEvent& e, bool& wake) {
  std::lock_guard lock(mu_);
  wake = false;
  if (ended_) return true;
  if (pending_.size() >= limit_) return false;
  wake = pending_.empty();
  pending_.push_back(visible_to(e, filter_));
  return true;
}

bool Subscription::end(std::string why) {
  std::lock_guard lock(mu_);
  if (ended_) return false;
  ended_ = std::move(why);
  return true;
}

EventBus::EventBus(Options options, WallTime started)
    : options_(options),
      next_id_(static_cast<std::uint64_t>(
                   std::chrono::duration_cast<std::chrono::milliseconds>(started.time_since_epoch()).count()) +
               1) {
  options_.ring = std::max<std::size_t>(options_.ring, 1);
  options_.queue = std::max<std::size_t>(options_.queue, 1);
  ring_.reserve(options_.ring);
}

std::shared_ptr<Subscription> EventBus::subscribe(EventFilter filter, std::optional<std::uint64_t> last_event_id) {
  std::lock_guard lock(mu_);
  std::vector<LiveEvent> replay;
  if (last_event_id) {
    const std::uint64_t oldest = ring_.empty() ? next_id_ : ring_[ring_head_].id;
    // An id past the last one given is not this bus's: everything kept.
    const std::uint64_t after = *last_event_id >= next_id_ ? 0 : *last_event_id;
    if (after + 1 < oldest) {
      const std::string fields = after == 0 ? std::string("\"first\":null,\"last\":") + std::to_string(oldest - 1)
                                            : "\"first\":" + std::to_string(after + 1) +
                                                  ",\"last\":" + std::to_string(oldest - 1);
      replay.push_back({0, "events_lost", "", compose(head(0, "events_lost", "", real_clock().wall_now()), fields), ""});
    }
    for (std::size_t i = 0; i < ring_.size(); ++i) {
      const LiveEvent& e = ring_[(ring_head_ + i) % ring_.size()];
      if (e.id > after && filter.matches(e.pool, e.type, e.audience)) replay.push_back(visible_to(e, filter));
    }
  }
  // The replay does not count against falling behind: the queue's bound is
  // on top of it.
  auto sub = std::make_shared<Subscription>(std::move(filter), options_.queue + replay.size());
  sub->pending_ = std::move(replay);
  if (closed_) {
    sub->ended_ = *closed_;
    return sub;
  }
  std::erase_if(subscribers_, [](const std::weak_ptr<Subscription>& w) { return w.expired(); });
  subscribers_.push_back(sub);
  return sub;
}

void EventBus::publish(std::string_view pool, const core::Event& event) {
  json::object o;
  if (event.session != 0) o["session"] = event.session;
  if (event.lease != 0) o["lease"] = runtime::pool_scoped_id(pool, event.lease);
  if (wants_reason(event.type)) o["reason"] = to_string(event.reason);
  o["value"] = event.value;
  if (!event.detail.empty()) o["detail"] = event.detail;
  if (event.type == core::EventType::kLeaseReleased) {
    o["outcome"] = core::to_string(static_cast<core::ReleaseOutcome>(event.value));
  }
  if (event.type == core::EventType::kAutoscaled) {
    o["previous"] = event.previous;
    o["confidence"] = std::round(event.confidence * 1000) / 1000;
  }
  auto members = [](const json::object& object) {
    std::string text = json::serialize(object);
    return text.substr(1, text.size() - 2);
  };
  const std::string fields = members(o);
  if (event.type == core::EventType::kLeaseGranted && !event.detail.empty()) {
    // The owner (a tenant) is for admins and that tenant only.
    o.erase("detail");
    publish_live(core::to_string(event.type), pool, fields, true, {}, event.detail, members(o));
    return;
  }
  publish(core::to_string(event.type), pool, fields, true);
}


std::uint64_t EventBus::publish(std::string_view type, std::string_view pool, std::string_view fields, bool keep,
                               std::string_view audience) {
  return publish_live(type, pool, fields, keep, audience, {}, std::nullopt);
}

std::uint64_t EventBus::publish_live(std::string_view type, std::string_view pool, std::string_view fields, bool keep,
                                     std::string_view audience, std::string_view owner,
                                     std::optional<std::string_view> redacted_fields) {
  std::vector<std::shared_ptr<Subscription>> notify;  // to wake: new events, or dropped
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    id = keep ? next_id_++ : 0;
    const std::string head_json = head(id, type, pool, real_clock().wall_now());
    LiveEvent e{id, std::string(type), std::string(pool), compose(head_json, fields), std::string(audience)};
    if (redacted_fields) {
      e.owner = std::string(owner);
      e.redacted = compose(head_json, *redacted_fields);
    }
    for (const std::weak_ptr<Subscription>& w : subscribers_) {
      auto sub = w.lock();
      if (!sub || !sub->filter().matches(e.pool, e.type, e.audience)) continue;
      bool wake = false;
      if (!sub->push(e, wake)) {
        if (sub->end("slow consumer: more than " + std::to_string(sub->limit_) +
                     " events not yet delivered")) {
          ++dropped_;
          notify.push_back(std::move(sub));
        }
      } else if (wake) {
        notify.push_back(std::move(sub));
      }
    }
    std::erase_if(subscribers_, [](const std::weak_ptr<Subscription>& w) {
      auto s = w.lock();
      return !s || s->ended().has_value();
    });
    if (keep) {
      if (ring_.size() < options_.ring) {
        ring_.push_back(std::move(e));
      } else {
        ring_[ring_head_] = std::move(e);
        ring_head_ = (ring_head_ + 1) % ring_.size();
      }
    }
  }
  for (auto& sub : notify) {
    if (auto w = sub->waker()) w();
  }
  return id;
}

void EventBus::close_all(const std::string& why) {
  std::vector<std::shared_ptr<Subscription>> ended;
  {
    std::lock_guard lock(mu_);
    closed_ = why;
    for (const std::weak_ptr<Subscription>& w : subscribers_) {
      if (auto s = w.lock(); s && s->end(why)) ended.push_back(std::move(s));
    }
    subscribers_.clear();
  }
  for (auto& s : ended) {
    if (auto w = s->waker()) w();
  }
}

std::size_t EventBus::subscribers() const {
  std::lock_guard lock(mu_);
  return static_cast<std::size_t>(std::count_if(subscribers_.begin(), subscribers_.end(),
                                                [](const std::weak_ptr<Subscription>& w) { return !w.expired(); }));
}

std::uint64_t EventBus::last_id() const {
  std::lock_guard lock(mu_);
  return next_id_ - 1;
}

std::uint64_t EventBus::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

}  // namespace poolkeeper::monitor
