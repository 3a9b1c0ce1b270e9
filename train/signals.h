// Ctrl-C handling for training: SIGINT/SIGTERM set a flag the loop polls, so it
// can checkpoint.
#pragma once

#include "base/error.h"

namespace kvc::train {

// Thrown by a writing command that polled the flag below: unwinding removes its temp file, and
// main exits with 130 (128 + SIGINT, the shell's convention).
class Interrupted : public Error {
 public:
  explicit Interrupted(const std::string& msg) : Error(msg) {}
};

// Installs handlers for SIGINT and SIGTERM that only set an atomic flag
// (nothing else is async-signal-safe). A second signal of either kind while the
// flag is set removes the registered temp files (data/file_checks.h), restores
// the default action and re-raises, so a user can still kill a run that stopped
// responding without leaving a temp file behind.
void install_interrupt_handlers();
// Puts the default actions back (tests, and before main returns).
void restore_default_handlers();
// True once SIGINT or SIGTERM arrived (or request_interrupt() was called).
bool interrupt_requested();
// The signal that set the flag, 0 when none.
int interrupt_signal();
// Sets or clears the flag by hand (tests; a library caller that wants to stop a
// run).
void request_interrupt();
void clear_interrupt();
// Throws Interrupted naming `what` once the flag is set.
void throw_if_interrupted(const char* what);

// Clears the flag and installs the handlers for its lifetime; restores the
// defaults when it ends, by a return or a throw.
class InterruptScope {
 public:
  InterruptScope() {
    clear_interrupt();
    install_interrupt_handlers();
  }
  ~InterruptScope() { restore_default_handlers(); }
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

}  // namespace kvc::train
