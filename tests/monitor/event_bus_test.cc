#include "monitor/event_bus.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <limits>

namespace poolkeeper::monitor {
namespace {

namespace json = boost::json;

const WallTime kStart{std::chrono::milliseconds(1'700'000'000'000)};
constexpr std::uint64_t kFirstId = 1'700'000'000'001;

core::Event started(SessionId s) {
  return core::Event{.type = core::EventType::kSessionStarted, .session = s};
}

std::vector<std::uint64_t> ids(const std::vector<LiveEvent>& events) {
  std::vector<std::uint64_t> out;
  for (const LiveEvent& e : events) out.push_back(e.id);
  return out;
}

TEST(EventBus, EventsCarryIncreasingIdsFromTheStartTimeAndTheirFields) {
  EventBus bus({}, kStart);
  auto sub = bus.subscribe({});
  bus.publish("python", started(7));
  bus.publish("python", core::Event{.type = core::EventType::kAutoscaled, .value = 5, .detail = "busy",
                                    .previous = 2, .confidence = 0.91234});
  auto got = sub->take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(ids(got), (std::vector<std::uint64_t>{kFirstId, kFirstId + 1}));
  const json::object first = json::parse(got[0].json).as_object();
  EXPECT_EQ(first.at("id").to_number<std::uint64_t>(), kFirstId);
  EXPECT_EQ(first.at("type").as_string(), "session_started");
  EXPECT_EQ(first.at("pool").as_string(), "python");
  EXPECT_EQ(first.at("session").as_int64(), 7);
  EXPECT_TRUE(first.contains("at"));
  const json::object second = json::parse(got[1].json).as_object();
  EXPECT_EQ(second.at("type").as_string(), "autoscaled");
  EXPECT_EQ(second.at("value").as_int64(), 5);
  EXPECT_EQ(second.at("previous").as_int64(), 2);
  EXPECT_DOUBLE_EQ(second.at("confidence").as_double(), 0.912);
  EXPECT_EQ(second.at("detail").as_string(), "busy");
  EXPECT_TRUE(sub->take().empty());
  EXPECT_EQ(bus.last_id(), kFirstId + 1);
}

// Verifies that a released lease names how its holder gave it back, and
// its id as clients see it.
TEST(EventBus, AReleasedLeaseNamesItsOutcome) {
  EventBus bus({}, kStart);
  auto sub = bus.subscribe({});
  bus.publish("p", core::Event{.type = core::EventType::kLeaseReleased, .session = 3, .lease = 42,
                               .value = static_cast<std::int64_t>(core::ReleaseOutcome::kBroken)});
  bus.publish("p", core::Event{.type = core::EventType::kLeaseReleased, .session = 3, .lease = 43});
  auto got = sub->take();
  ASSERT_EQ(got.size(), 2u);
  const json::object broken = json::parse(got[0].json).as_object();
  EXPECT_EQ(broken.at("outcome").as_string(), "broken");
  EXPECT_EQ(broken.at("lease").as_string(), "p.42");
  EXPECT_EQ(json::parse(got[1].json).at("outcome").as_string(), "ok");
}

// Verifies that whose a lease is (lease_granted's detail) reaches admins and
// that tenant only, live and on resume; other tenants get the event without it.
TEST(EventBus, ALeaseOwnerIsShownToAdminsAndItsTenantOnly) {
  EventBus bus({}, kStart);
  auto admin = bus.subscribe({});
  auto alice = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "alice"});
  auto bob = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "bob"});
  bus.publish("p", core::Event{.type = core::EventType::kLeaseGranted, .session = 1, .lease = 7, .detail = "alice"});
  auto detail_of = [](const std::shared_ptr<Subscription>& sub) {
    auto got = sub->take();
    EXPECT_EQ(got.size(), 1u);
    if (got.empty()) return std::string("(none)");
    const json::object o = json::parse(got[0].json).as_object();
    EXPECT_EQ(o.at("lease").as_string(), "p.7") << "the event itself is there for everyone";
    return o.contains("detail") ? std::string(o.at("detail").as_string()) : std::string("(hidden)");
  };
  EXPECT_EQ(detail_of(admin), "alice");
  EXPECT_EQ(detail_of(alice), "alice");
  EXPECT_EQ(detail_of(bob), "(hidden)");
  auto bob_again = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "bob"}, kFirstId - 1);
  auto alice_again = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "alice"}, kFirstId - 1);
  EXPECT_EQ(detail_of(bob_again), "(hidden)") << "resumed";
  EXPECT_EQ(detail_of(alice_again), "alice") << "resumed";
}

TEST(EventBus, FiltersByPoolAndTypeWithPrefixes) {
  EventBus bus({}, kStart);
  auto filter = parse_filter("a,b", "session_*,scaled");
  ASSERT_TRUE(filter) << filter.error();
  auto sub = bus.subscribe(*filter);
  bus.publish("a", started(1));
  bus.publish("c", started(2));                                          // other pool
  bus.publish("b", core::Event{.type = core::EventType::kLeaseGranted});  // other type
  bus.publish("b", core::Event{.type = core::EventType::kScaled});
  bus.publish("", "alert_firing", "", true);  // daemon-wide, but not asked for
  auto got = sub->take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, "session_started");
  EXPECT_EQ(got[1].type, "scaled");
}

TEST(EventBus, AnUnknownTypeIsRefusedWithTheKnownOnes) {
  auto f = parse_filter("", "session_started,sesion_closed");
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().find("\"sesion_closed\""), std::string::npos) << f.error();
  EXPECT_NE(f.error().find("lease_granted"), std::string::npos) << f.error();
  EXPECT_FALSE(parse_filter("", "nothing_*"));
  EXPECT_TRUE(parse_filter("", "alert_*"));
}

TEST(EventBus, ResumingAfterAnIdHandsOverWhatWasMissed) {
  EventBus bus({.ring = 16, .queue = 8}, kStart);
  for (SessionId s = 1; s <= 5; ++s) bus.publish("p", started(s));
  auto sub = bus.subscribe({}, kFirstId + 2);
  EXPECT_EQ(ids(sub->take()), (std::vector<std::uint64_t>{kFirstId + 3, kFirstId + 4}));
  auto none = bus.subscribe({}, kFirstId + 4);
  EXPECT_TRUE(none->take().empty());
  bus.publish("p", started(6));
  EXPECT_EQ(ids(none->take()), (std::vector<std::uint64_t>{kFirstId + 5}));
}

TEST(EventBus, ResumingPastTheRingSaysWhichEventsWereLost) {
  EventBus bus({.ring = 4, .queue = 8}, kStart);
  for (SessionId s = 1; s <= 10; ++s) bus.publish("p", started(s));
  // Kept: the last four (ids +6..+9); the client last saw +1.
  auto sub = bus.subscribe({}, kFirstId + 1);
  auto got = sub->take();
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0].type, "events_lost");
  const json::object lost = json::parse(got[0].json).as_object();
  EXPECT_EQ(lost.at("first").to_number<std::uint64_t>(), kFirstId + 2);
  EXPECT_EQ(lost.at("last").to_number<std::uint64_t>(), kFirstId + 5);
  EXPECT_EQ(ids({got.begin() + 1, got.end()}),
            (std::vector<std::uint64_t>{kFirstId + 6, kFirstId + 7, kFirstId + 8, kFirstId + 9}));
  // An id from before this bus started (an earlier run): all of it is lost.
  auto older = bus.subscribe({}, 5);
  EXPECT_EQ(older->take().front().type, "events_lost");
}

TEST(EventBus, SnapshotsAreNeitherNumberedNorKept) {
  EventBus bus({}, kStart);
  auto live = bus.subscribe({});
  EXPECT_EQ(bus.publish("status", "p", "\"sessions\":3", false), 0u);
  auto got = live->take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 0u);
  const json::object o = json::parse(got[0].json).as_object();
  EXPECT_FALSE(o.contains("id"));
  EXPECT_EQ(o.at("sessions").as_int64(), 3);
  auto resumed = bus.subscribe({}, kFirstId - 1);
  EXPECT_TRUE(resumed->take().empty());
}

TEST(EventBus, TheWakerRunsWhenAnEmptyQueueGetsEvents) {
  EventBus bus({}, kStart);
  auto sub = bus.subscribe({});
  int wakes = 0;
  sub->set_waker([&] { ++wakes; });
  bus.publish("p", started(1));
  bus.publish("p", started(2));
  EXPECT_EQ(wakes, 1);  // the second found the queue not yet taken
  sub->take();
  bus.publish("p", started(3));
  EXPECT_EQ(wakes, 2);
}

TEST(EventBus, ASlowConsumerIsDroppedWithTheReasonAndOthersGoOn) {
  EventBus bus({.ring = 64, .queue = 3}, kStart);
  auto slow = bus.subscribe({});
  auto quick = bus.subscribe({});
  int slow_wakes = 0;
  slow->set_waker([&] { ++slow_wakes; });
  for (SessionId s = 1; s <= 5; ++s) {
    bus.publish("p", started(s));
    EXPECT_EQ(quick->take().size(), 1u);
  }
  ASSERT_TRUE(slow->ended());
  EXPECT_NE(slow->ended()->find("slow consumer"), std::string::npos) << *slow->ended();
  EXPECT_EQ(slow_wakes, 2);  // the first event, then the drop
  EXPECT_EQ(slow->take().size(), 3u);  // what it had queued still comes out
  EXPECT_EQ(bus.dropped(), 1u);
  EXPECT_EQ(bus.subscribers(), 1u);
  EXPECT_FALSE(quick->ended());
}

TEST(EventBus, AReplayDoesNotCountAsFallingBehind) {
  EventBus bus({.ring = 64, .queue = 2}, kStart);
  for (SessionId s = 1; s <= 10; ++s) bus.publish("p", started(s));
  auto sub = bus.subscribe({}, kFirstId - 1);
  bus.publish("p", started(11));
  EXPECT_FALSE(sub->ended());
  EXPECT_EQ(sub->take().size(), 11u);
}

TEST(EventBus, ClosingEndsEverySubscriptionAndWakesIt) {
  EventBus bus({}, kStart);
  auto a = bus.subscribe({});
  bool woken = false;
  a->set_waker([&] { woken = true; });
  bus.close_all("the daemon is stopping");
  EXPECT_TRUE(woken);
  EXPECT_EQ(a->ended(), "the daemon is stopping");
  EXPECT_EQ(bus.subscribers(), 0u);
}

TEST(EventBus, AForgottenSubscriptionIsNotKept) {
  EventBus bus({}, kStart);
  {
    auto gone = bus.subscribe({});
    EXPECT_EQ(bus.subscribers(), 1u);
  }
  EXPECT_EQ(bus.subscribers(), 0u);
  bus.publish("p", started(1));  // nobody to hand it to: no harm
  EXPECT_EQ(bus.last_id(), kFirstId);
}

TEST(EventBus, AnIdItNeverGaveIsAnsweredWithEverythingKept) {
  EventBus bus({.ring = 4, .queue = 8}, kStart);
  for (SessionId s = 1; s <= 3; ++s) bus.publish("p", started(s));
  // From a run whose ids went past this one's (or a made-up id).
  for (std::uint64_t id : {kFirstId + 100, std::numeric_limits<std::uint64_t>::max()}) {
    auto sub = bus.subscribe({}, id);
    auto got = sub->take();
    ASSERT_EQ(got.size(), 4u) << id;
    EXPECT_EQ(got[0].type, "events_lost");
    EXPECT_TRUE(json::parse(got[0].json).at("first").is_null());
    EXPECT_EQ(ids({got.begin() + 1, got.end()}), (std::vector<std::uint64_t>{kFirstId, kFirstId + 1, kFirstId + 2}));
  }
}

TEST(EventBus, AnAudienceLimitsWhoHearsAnEvent) {
  EventBus bus({}, kStart);
  auto admin = bus.subscribe({});
  auto alice = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "alice"});
  auto bob = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "bob"});
  bus.publish("alert_firing", "", "", true, "tenant:alice");
  bus.publish("alert_firing", "", "", true, "admin");
  bus.publish("alert_firing", "p", "", true);
  EXPECT_EQ(admin->take().size(), 3u);
  EXPECT_EQ(alice->take().size(), 2u);  // hers and everyone's
  EXPECT_EQ(bob->take().size(), 1u);    // everyone's only
  // The same on resuming.
  auto bob_again = bus.subscribe({.pools = {}, .types = {}, .admin = false, .tenant = "bob"}, kFirstId - 1);
  EXPECT_EQ(bob_again->take().size(), 1u);
}

TEST(EventBus, ASubscriptionAfterClosingHasEnded) {
  EventBus bus({}, kStart);
  bus.close_all("the daemon is stopping");
  auto late = bus.subscribe({});
  EXPECT_EQ(late->ended(), "the daemon is stopping");
  EXPECT_EQ(bus.subscribers(), 0u);
}

}  // namespace
}  // namespace poolkeeper::monitor
