// loss.svg: a standalone two-panel SVG picture of a run's metrics, drawn without a plotting
// library.
#pragma once

#include <string>

#include "train/metrics.h"

namespace kvc::train {

// The picture, 960 wide and about 640 high:
// - top panel, log-scale y: the raw train loss (thin, faint), its smoothed curve over it (a
//   centred moving average of log10(loss) over about 1/50 of the run), the eval loss
//   with markers, the best checkpoint (lowest eval loss after step 0) as a ring and a vertical
//   line;
// - bottom panel: the learning rate (linear, left axis) and the gradient norm (log, right axis);
// - both panels share the step axis; a resume point is a vertical dashed line through both;
// - each panel's legend sits in a row above its frame, so it never covers data.
// Elements carry classes the test reads: panel frames `frame-loss`/`frame-lr`, series `train-raw`,
// `train-smoothed`, `eval`, `lr`, `grad-norm`, markers `best`, `resume`, x ticks `xtick`.
// Non-finite values, and non-positive ones on a log axis, are skipped.
std::string loss_curve_svg(const MetricsHistory& history, const std::string& title);
// Writes loss_curve_svg atomically.
void write_loss_svg(const std::string& path, const MetricsHistory& history,
                    const std::string& title);

}  // namespace kvc::train
