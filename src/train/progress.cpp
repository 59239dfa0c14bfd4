// The progress line of a training run (progress.h).
#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "mhc/format.h"

namespace mhc::train {

Progress::Progress(int64_t total_steps) : total_(total_steps), tty_(::isatty(STDOUT_FILENO)) {}

void Progress::step(const Step& p) {
  const Format three = Format::fixed(3);
  std::ostringstream s;
  s << "step " << p.step << "/" << total_ << " | loss " << three(p.loss);
  if (p.val_loss) s << " | val " << three(*p.val_loss);
  s << " | norm " << Format::fixed(2)(p.grad_norm) << " | lr " << Format::significant(2)(p.lr) << " | "
    << Format::fixed(0)(p.step_ms) << " ms | " << Format::count()(p.tokens_per_s) << " tok/s";
  if (p.skipped) s << " | skipped (non-finite)";
  if (!tty_) {
    std::cout << s.str() << std::endl;
    return;
  }
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * p.step / std::max<int64_t>(total_, 1));
  std::cout << "\r\033[K[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] " << s.str()
            << " | ETA " << duration_text(p.eta_seconds) << (p.val_loss || p.step == total_ ? "\n" : "") << std::flush;
}

void Progress::note(const std::string& line) { std::cout << (tty_ ? "\r\033[K" : "") << line << std::endl; }

}  // namespace mhc::train
