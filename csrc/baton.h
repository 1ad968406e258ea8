// Baton: strict turn-taking between a model thread and one worker thread.
//
//   Baton b;                      // the model holds the turn at first
//   b.give(Turn::Worker);         // model: hand over ...
//   b.wait_for(Turn::Model, -1);  // ... and wait until the worker hands back
//
// Exactly one side runs at a time. A waiter first spins briefly (yielding the CPU,
// so two threads on one core don't burn each other's time slice), then sleeps on a
// futex. Plain C++: no Python, no GIL; callers release the GIL around waits.
#pragma once

#include <atomic>
#include <cstdint>

namespace nnsight_fast {

enum class Turn : uint32_t { Model = 0, Worker = 1 };

class Baton {
 public:
  // Hands the turn to `to` and wakes a sleeping waiter.
  void give(Turn to);
  // Blocks until it is `me`'s turn, spinning `spin_us` before sleeping.
  // `timeout_us` < 0 waits forever. Returns false when the timeout passed first.
  bool wait_for(Turn me, int64_t timeout_us, int64_t spin_us = kSpinWindowUs);
  Turn turn() const { return static_cast<Turn>(turn_.load(std::memory_order_acquire)); }
  // How long the model side spins for the worker's reply before sleeping (microseconds).
  static constexpr int64_t kSpinWindowUs = 100;

 private:
  std::atomic<uint32_t> turn_{0};
  std::atomic<uint32_t> sleepers_{0};
};

}  // namespace nnsight_fast
