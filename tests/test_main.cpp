// The doctest entry point of kvc_tests: every test of every layer lives in this one binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
