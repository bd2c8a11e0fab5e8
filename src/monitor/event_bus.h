// EventBus: what happens in the pools, as a live stream for any number of
// subscribers (SSE on /v1/events, WebSocket on /v1/ws; docs/events.md).
//
// Each event is one JSON object: {"id", "type", "pool", "at", ...}. Events
// that say something happened (a session started, a lease was granted, the
// pool scaled, an alert fired) get an id, increasing, and stay in a bounded
// ring, so a client that reconnects with the last id it saw gets what it
// missed; if the ring no longer holds all of it, an `events_lost` event says
// which ids are gone. Snapshots (`pool_status`, sent at a set rate) carry no
// id and are not kept: the next one is as good.
//
// Ids start at the bus's creation time in milliseconds since the epoch, so a
// client resuming across a restart of the daemon learns that it lost events
// instead of silently skipping the new ones.
//
// Publishing never waits for a subscriber: each has a bounded queue of
// events not yet taken, and one that falls further behind is dropped (its
// subscription ends with the reason), never slowing the pools.
//
// Thread-safety: all of it may be called from any thread. A subscription's
// waker runs on the publishing thread, outside the bus's locks: it should
// only post (wake the connection that owns the subscription).
//
//   EventBus bus({.ring = 4096, .queue = 1024});
//   auto sub = bus.subscribe(filter, last_event_id);
//   sub->set_waker([...] { post a wake-up });
//   bus.publish(pool_name, core_event);
//   for (LiveEvent& e : sub->take()) send(e.json);
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/actions.h"
#include "poolkeeper/clock.h"

namespace poolkeeper::monitor {

// Which events a subscriber wants: pools and types, each empty for all. A
// type ending in '*' matches a prefix ("session_*", "alert_*").
struct EventFilter {
  std::vector<std::string> pools;
  std::vector<std::string> types;
  // Who listens: an admin (or nobody, without tokens) hears every audience;
  // a tenant hears events for everyone and for "tenant:" + its name.
  bool admin = true;
  std::string tenant{};

  bool matches(std::string_view pool, std::string_view type, std::string_view audience = {}) const;
  // Whether it may see whose a lease is.
  bool sees_owner(std::string_view owner) const { return admin || owner == tenant; }
};

struct LiveEvent {
  std::uint64_t id = 0;  // 0: a snapshot, not kept
  std::string type;
  std::string pool;      // empty for the daemon's own events
  std::string json;      // the whole event
  std::string audience;  // who may see it besides admins: "" everyone, "tenant:NAME", "admin" admins only
  // A lease's owner (its tenant) is shown to admins and that tenant only:
  // the others get `redacted`, the event without it (empty: nothing to hide).
  std::string owner{};
  std::string redacted{};

  // What a listener with `filter` receives of it.
  const std::string& json_for(const EventFilter& filter) const;
};

// A filter from comma-separated lists (the query's `pool` and `type`); an
// unknown type is an error that names it and the known ones.
std::expected<EventFilter, std::string> parse_filter(std::string_view pools, std::string_view types);

// Every event type a subscriber may ask for.
const std::vector<std::string>& event_types();

class Subscription {
 public:
  // Events not yet taken, oldest first.
  std::vector<LiveEvent> take();
  // Why the subscription ended (dropped as too slow, the daemon stopping),
  // once it has; events queued before still come out of take().
  std::optional<std::string> ended() const;
  // Called (on the publisher's thread) when events arrive after the queue
  // was emptied, and when the subscription ends.
  void set_waker(std::function<void()> waker);
  const EventFilter& filter() const { return filter_; }

  // Internal (the bus): use EventBus::subscribe.
  Subscription(EventFilter filter, std::size_t limit) : filter_(std::move(filter)), limit_(limit) {}

 private:
  friend class EventBus;
  // False when the queue is full: the subscription ends instead.
  bool push(const LiveEvent& e, bool& wake);  // as this subscriber may see it
  bool end(std::string why);  // true if it had not ended before
  std::function<void()> waker() const;

  const EventFilter filter_;
  mutable std::mutex mu_;
  std::vector<LiveEvent> pending_;
  std::size_t limit_;
  std::optional<std::string> ended_;
  std::function<void()> waker_;
};

class EventBus {
 public:
  struct Options {
    std::size_t ring = 4096;   // events kept for resuming
    std::size_t queue = 1024;  // events a subscriber may fall behind
  };
  explicit EventBus(Options options, WallTime started = real_clock().wall_now());

  // Subscribes; with `last_event_id`, first hands over the kept events after
  // it. An id this bus never gave (a later one: from another run) is
  // answered with events_lost and everything kept. After close_all() the
  // subscription has already ended.
  std::shared_ptr<Subscription> subscribe(EventFilter filter, std::optional<std::uint64_t> last_event_id = {});

  // A core event of `pool` (which types go out: docs/events.md).
  void publish(std::string_view pool, const core::Event& event);
  // Any other event: `fields` is a JSON object's members (`"a":1,"b":"x"`,
  // may be empty), added after id, type, pool and at. `keep`: an id and a
  // place in the ring; otherwise a snapshot.
  std::uint64_t publish(std::string_view type, std::string_view pool, std::string_view fields, bool keep = true,
                        std::string_view audience = {});

  // Ends every subscription with `why` (the daemon is stopping).
  void close_all(const std::string& why);

  std::size_t subscribers() const;
  std::uint64_t last_id() const;
  // Subscribers dropped for falling behind, since the start.
  std::uint64_t dropped() const;

 private:
  Options options_;
  mutable std::mutex mu_;
  std::vector<LiveEvent> ring_;  // circular, ring_head_ is the oldest once full
  std::size_t ring_head_ = 0;
  std::uint64_t next_id_;
  std::uint64_t dropped_ = 0;
  std::optional<std::string> closed_;  // why close_all() ended everything

  // publish(), with an owner: listeners who may not see it get the event
  // with `redacted_fields` instead.
  std::uint64_t publish_live(std::string_view type, std::string_view pool, std::string_view fields, bool keep,
                             std::string_view audience, std::string_view owner,
                             std::optional<std::string_view> redacted_fields);
  std::vector<std::weak_ptr<Subscription>> subscribers_;
};

}  // namespace poolkeeper::monitor
