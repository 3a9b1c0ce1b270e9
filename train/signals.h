// Ctrl-C handling for training: SIGINT/SIGTERM set a flag the loop polls, so it
// can checkpoint.
#pragma once

namespace kvc::train {

// Installs handlers for SIGINT and SIGTERM that only set an atomic flag
// (nothing else is async-signal-safe). A second signal of either kind while the
// flag is set restores the default action and re-raises, so a user can still
// kill a run that stopped responding.
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

}  // namespace kvc::train
