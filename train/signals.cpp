// SIGINT/SIGTERM handlers that set one lock-free atomic flag; the training loop
// polls it.
#include "train/signals.h"

#include <atomic>
#include <csignal>

#include "data/file_checks.h"

namespace kvc::train {

namespace {

// sig_atomic_t would do for the flag alone; std::atomic<int> that is lock-free
// is equally async-signal-safe and also orders the flag against the loop's
// other reads.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "signal flag must be lock-free");

extern "C" void on_interrupt(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {
    // Second signal: the user insists. Default action (terminate) right away,
    // leaving no temp file of a half-written output.
    remove_registered_temp_files();
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking read should return early rather than hang
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void restore_default_handlers() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

bool interrupt_requested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int interrupt_signal() { return g_signal.load(std::memory_order_relaxed); }
void request_interrupt() { g_signal.store(SIGINT); }
void clear_interrupt() { g_signal.store(0); }

void throw_if_interrupted(const char* what) {
  const int sig = interrupt_signal();
  if (sig != 0) {
    throw Interrupted(str(what, ": interrupted by ", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                          "; nothing was written"));
  }
}

}  // namespace kvc::train
