// TEMPORARY stubs
#include "train/cli_options.h"
namespace kvc::cli {
#define STUB(fn, name) Command fn(CLI::App& app) { return {app.add_subcommand(name, name), [] { return 0; }}; }
STUB(add_gradcheck_command, "gradcheck")
STUB(add_eval_command, "eval")
STUB(add_infer_command, "infer")
STUB(add_bench_command, "bench")
}
