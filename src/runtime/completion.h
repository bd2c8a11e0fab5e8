// Completion<T>: a type-erased, move-only completion handler that always
// completes on its handler's own executor, posted, never inline (dispatch()
// is the one exception, for callers that know it is safe).
//
// The runner's operations finish on the pool's strand; running a caller's
// continuation there would run caller code in the middle of the runner's work
// (and on the wrong executor). Completion captures the handler's associated
// executor with its concrete type when the operation starts (and tracks
// outstanding work on it, so the caller's io_context does not run out of work
// while it waits), then posts the handler there.
//
// Thread-safety: a Completion is used by one thread at a time; calling it
// from any thread is fine.
#pragma once

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include <memory>
#include <type_traits>
#include <utility>

namespace poolkeeper::runtime {

template <class... T>
class Completion {
 public:
  Completion() = default;

  template <class Handler, class DefaultExecutor>
  Completion(Handler&& handler, const DefaultExecutor& fallback)
      : impl_(std::make_unique<Impl<std::decay_t<Handler>,
                                    std::decay_t<decltype(boost::asio::prefer(
                                        boost::asio::get_associated_executor(handler, fallback),
                                        boost::asio::execution::outstanding_work.tracked))>>>(
            std::forward<Handler>(handler), fallback)) {}

  explicit operator bool() const { return impl_ != nullptr; }

  // Completes once; later calls do nothing.
  void operator()(T... values) {
    if (impl_ == nullptr) return;
    std::unique_ptr<Base> impl = std::move(impl_);
    impl->post(std::move(values)...);
  }

  // Completes at once when the calling thread runs the handler's executor
  // (posted otherwise). Only for callers whose own state is consistent and
  // that expect the handler to run before this returns.
  void dispatch(T... values) {
    if (impl_ == nullptr) return;
    std::unique_ptr<Base> impl = std::move(impl_);
    impl->dispatch(std::move(values)...);
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void post(T... values) = 0;
    virtual void dispatch(T... values) = 0;
  };

  template <class Handler, class WorkExecutor>
  struct Impl final : Base {
    template <class H, class D>
    Impl(H&& h, const D& fallback)
        : handler(std::forward<H>(h)),
          work(boost::asio::prefer(boost::asio::get_associated_executor(handler, fallback),
                                   boost::asio::execution::outstanding_work.tracked)) {}
    void post(T... values) override {
      boost::asio::post(work, [h = std::move(handler), ... v = std::move(values)]() mutable {
        std::move(h)(std::move(v)...);
      });
    }
    void dispatch(T... values) override {
      boost::asio::dispatch(work, [h = std::move(handler), ... v = std::move(values)]() mutable {
        std::move(h)(std::move(v)...);
      });
    }
    Handler handler;
    WorkExecutor work;
  };

  std::unique_ptr<Base> impl_;
};

}  // namespace poolkeeper::runtime
