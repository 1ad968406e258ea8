#include "baton.h"

#include <chrono>
#include <climits>
#include <sched.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <thread>
#endif

namespace nnsight_fast {
namespace {

using Clock = std::chrono::steady_clock;

int64_t elapsed_us(Clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - since).count();
}

// Sleep while *word == expected (or until timeout_us passes; < 0 means forever).
void sleep_while_equal(std::atomic<uint32_t>* word, uint32_t expected, int64_t timeout_us) {
#ifdef __linux__
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (timeout_us >= 0) {
    ts.tv_sec = timeout_us / 1000000;
    ts.tv_nsec = (timeout_us % 1000000) * 1000;
    tsp = &ts;
  }
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, tsp, nullptr, 0);
#else
  (void)expected;
  std::this_thread::sleep_for(std::chrono::microseconds(timeout_us < 0 ? 50 : std::min<int64_t>(timeout_us, 50)));
#endif
}

void wake_all(std::atomic<uint32_t>* word) {
#ifdef __linux__
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}

}  // namespace

void Baton::give(Turn to) {
  turn_.store(static_cast<uint32_t>(to), std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) != 0) wake_all(&turn_);
}

bool Baton::wait_for(Turn me, int64_t timeout_us, int64_t spin_us) {
  const auto want = static_cast<uint32_t>(me);
  if (turn_.load(std::memory_order_acquire) == want) return true;
  const auto start = Clock::now();
  for (;;) {
    // Spin (yielding the CPU) for a window ...
    const auto spin_start = Clock::now();
    for (int i = 0;; ++i) {
      if (turn_.load(std::memory_order_acquire) == want) return true;
      if ((i & 7) == 7) {
        if (elapsed_us(spin_start) >= spin_us) break;
        if (timeout_us >= 0 && elapsed_us(start) >= timeout_us) return false;
      }
      sched_yield();
    }
    // ... then sleep until the turn changes or the timeout passes.
    int64_t left = -1;
    if (timeout_us >= 0) {
      left = timeout_us - elapsed_us(start);
      if (left <= 0) return false;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t seen = turn_.load(std::memory_order_seq_cst);
    if (seen != want) sleep_while_equal(&turn_, seen, left);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

}  // namespace nnsight_fast
