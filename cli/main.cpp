// kvcompress: the command line. Parses with CLI11, runs one subcommand, maps
// errors to exit codes.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "base/error.h"
#include "cli/cli_options.h"
#include "train/signals.h"

namespace {

// Every error is one line: newlines inside a message (HDF5, CLI11) become "; ".
void print_error(const std::string& message) {
  std::string line;
  for (char c : message) {
    if (c == '\n') {
      if (!line.empty() && line.back() != ' ') line += "; ";
    } else {
      line += c;
    }
  }
  while (!line.empty() && (line.back() == ' ' || line.back() == ';')) line.pop_back();
  std::fprintf(stderr, "kvcompress: error: %s\n", line.c_str());
  std::fflush(stderr);
}

int run(int argc, char** argv) {
  using namespace kvc::cli;
  CLI::App app{
      "kvcompress: train, check, benchmark and run Native Sparse "
      "Attention KV compressors"};
  app.set_version_flag("--version", std::string(KVC_VERSION));
  app.require_subcommand(1);
  app.fallthrough(false);
  std::vector<Command> commands = {
      add_train_command(app),    add_gradcheck_command(app), add_eval_command(app),
      add_infer_command(app),    add_bench_command(app),     add_inspect_command(app),
      add_gen_data_command(app), add_compare_command(app),   add_export_command(app),
  };

  // CLI11 reports an unknown subcommand as "A subcommand is required"; name it
  // instead.
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const Command& c : commands) {
      known = known || c.app->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + c.app->get_name();
    }
    if (!known) {
      print_error(std::string("unknown command '") + argv[1] + "' (expected one of " + names + ")");
      return kExitUsage;
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (msg.empty()) msg = e.get_name();
    print_error(msg + " (run 'kvcompress --help' for usage)");
    return kExitUsage;
  }

  for (const Command& c : commands) {
    if (c.app->parsed()) return c.run();
  }
  print_error("no subcommand given (run 'kvcompress --help')");
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kvc::cli::UsageError& e) {
    print_error(e.what());
    return kvc::cli::kExitUsage;
  } catch (const kvc::train::Interrupted& e) {
    print_error(e.what());
    return kvc::cli::kExitInterrupted;
  } catch (const kvc::OutOfMemoryError& e) {
    print_error(std::string("out of memory: ") + e.what());
    return kvc::cli::kExitError;
  } catch (const kvc::Error& e) {
    print_error(e.what());
    return kvc::cli::kExitError;
  } catch (const std::bad_alloc&) {
    print_error("out of host memory");
    return kvc::cli::kExitError;
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
    return kvc::cli::kExitError;
  }
}
