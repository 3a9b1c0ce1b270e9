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
#include "dist/communicator.h"
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
  const kvc::dist::Communicator& world = kvc::dist::world();
  if (world.size() > 1) line = "rank " + std::to_string(world.rank()) + ": " + line;
  std::fprintf(stderr, "kvcompress: error: %s\n", line.c_str());
  std::fflush(stderr);
}

// A command-line mistake: the message, then where the flags are explained; exit code 2.
int usage_error(const std::string& message, const std::string& help) {
  print_error(message + " (see '" + help + "')");
  return kvc::cli::kExitUsage;
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
  // The reference pages ship with the sources.
  const std::string footer =
      "Every subcommand, flag, default and exit code: docs/cli.md; the file layouts: "
      "docs/formats.md.";
  app.footer(footer);
  for (const Command& c : commands) c.app->footer(footer);

  // CLI11 reports an unknown subcommand as "A subcommand is required"; name it
  // instead.
  std::string help = "kvcompress --help";  // where a usage error points
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const Command& c : commands) {
      known = known || c.app->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + c.app->get_name();
    }
    if (!known) {
      return usage_error(
          std::string("unknown command '") + argv[1] + "' (expected one of " + names + ")", help);
    }
    help = std::string("kvcompress ") + argv[1] + " --help";
  }

  try {
    app.parse(argc, argv);
    for (const Command& c : commands) {
      if (!c.app->parsed()) continue;
      // Several ranks cooperate only in train and bench; any other command would repeat its
      // work (and its writes) on every rank.
      const std::string name = c.app->get_name();
      const int ranks = kvc::dist::world().size();
      KVC_USAGE_CHECK(ranks == 1 || name == "train" || name == "bench", "'", name, "' runs as ",
                      ranks, " MPI ranks; only train and bench run on several (start it alone)");
      return c.run();
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (msg.empty()) msg = e.get_name();
    return usage_error(msg, help);
  } catch (const UsageError& e) {
    return usage_error(e.what(), help);
  }
  return usage_error("no subcommand given", help);
}

// Runs the command; an error is printed here. `together` is left true when every rank ends the
// same way (success, an interrupt, a collective error) and set false when this rank failed alone.
int run_reporting_errors(int argc, char** argv, bool* together) {
  try {
    return run(argc, argv);
  } catch (const kvc::dist::CollectiveError& e) {
    print_error(e.what());
    return kvc::cli::kExitError;
  } catch (const kvc::cli::UsageError& e) {
    print_error(e.what());
    *together = false;
    return kvc::cli::kExitUsage;
  } catch (const kvc::train::Interrupted& e) {
    print_error(e.what());
    return kvc::cli::kExitInterrupted;
  } catch (const kvc::OutOfMemoryError& e) {
    *together = false;
    print_error(std::string("out of memory: ") + e.what());
    return kvc::cli::kExitError;
  } catch (const kvc::Error& e) {
    *together = false;
    print_error(e.what());
    return kvc::cli::kExitError;
  } catch (const std::bad_alloc&) {
    *together = false;
    print_error("out of host memory");
    return kvc::cli::kExitError;
  } catch (const std::exception& e) {
    *together = false;
    print_error(std::string("internal error: ") + e.what());
    return kvc::cli::kExitError;
  }
}

}  // namespace

// Under an MPI launcher every process is one rank: only rank 0 logs; a rank that fails alone
// stops the others (MPI_Abort), so none waits forever for it.
int main(int argc, char** argv) {
  try {
    kvc::dist::init_world(&argc, &argv);
  } catch (const kvc::Error& e) {
    print_error(e.what());
    return kvc::cli::kExitError;
  }
  kvc::dist::Communicator& world = kvc::dist::world();
  if (!world.is_root()) spdlog::set_level(spdlog::level::warn);
  bool together = true;
  const int code = run_reporting_errors(argc, argv, &together);
  if (!together && world.size() > 1) world.abort(code);
  kvc::dist::finalize_world();
  return code;
}
