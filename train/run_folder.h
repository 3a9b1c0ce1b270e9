// The output folder of `train`: one run per folder, unless told to continue or start over.
#pragma once

#include <string>

namespace kvc::train {

// Makes sure a new run may write into `out` (which exists). A folder holding another run's files
// (checkpoint.h5, best.h5, metrics.csv) is refused with a kvc::Error that says how to go on,
// unless `resume` is a checkpoint in that same folder (the run continues) or `overwrite` is set,
// in which case those files and loss.svg are deleted first, so nothing of the old run is mistaken
// for the new one's.
void claim_run_folder(const std::string& out, const std::string& resume, bool overwrite);

}  // namespace kvc::train
