// metrics.jsonl (mhc/run_log.h): the step record's keys, written and read in one place.
#include "mhc/run_log.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "../common/json.h"
#include "mhc/diag.h"
#include "mhc/files.h"

namespace mhc::train {

namespace {

// A number that is not finite as null (JSON has no NaN), and null back as NaN.
nlohmann::ordered_json number_or_null(double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nullptr; }
double number_or_nan(const nlohmann::ordered_json& line, const char* key) {
  return line.contains(key) && line[key].is_number() ? line[key].get<double>() : NAN;
}
std::optional<double> optional_number(const nlohmann::ordered_json& line, const char* key) {
  if (!line.contains(key)) return std::nullopt;
  return number_or_nan(line, key);
}

}  // namespace

nlohmann::ordered_json StepRecord::to_json() const {
  nlohmann::ordered_json line = {{"step", step},
                                 {"loss", skipped ? nlohmann::ordered_json(nullptr) : number_or_null(loss)},
                                 {"lr", lr},
                                 {"grad_norm", number_or_null(grad_norm)},
                                 {"tokens_per_s", tokens_per_s},
                                 {"step_ms", step_ms},
                                 {"skipped", skipped},
                                 {"bad_steps", bad_steps}};
  if (all_reduce_ms) line["all_reduce_ms"] = *all_reduce_ms;
  if (val_loss) line["val_loss"] = number_or_null(*val_loss);
  if (!diag.is_null()) line["diag"] = diag, line["diag_ms"] = diag_ms.value_or(0.0);
  if (!collapse.is_null()) line["collapse"] = collapse;
  return line;
}

StepRecord StepRecord::from_json(const nlohmann::ordered_json& line) {
  StepRecord r;
  r.step = line.at("step").get<int64_t>();
  r.loss = number_or_nan(line, "loss"), r.lr = number_or_nan(line, "lr"), r.grad_norm = number_or_nan(line, "grad_norm");
  r.tokens_per_s = line.value("tokens_per_s", 0.0), r.step_ms = line.value("step_ms", 0.0);
  r.skipped = line.value("skipped", false), r.bad_steps = line.value("bad_steps", int64_t{0});
  r.all_reduce_ms = optional_number(line, "all_reduce_ms");
  r.val_loss = optional_number(line, "val_loss");
  r.diag_ms = optional_number(line, "diag_ms");
  if (line.contains("diag")) r.diag = line["diag"];
  if (line.contains("collapse")) r.collapse = line["collapse"];
  return r;
}

nlohmann::ordered_json log_keys() {
  return {{"step", "step"},           {"loss", "loss"},         {"val_loss", "val_loss"},
          {"grad_norm", "grad_norm"}, {"diagnostics", "diag"},  {"collapse", "collapse"}};
}

RunLog::RunLog(std::string path, bool resumed, int64_t step) : path_(std::move(path)) {
  std::string kept;
  if (resumed && std::filesystem::exists(path_))
    for (const StepRecord& r : read(path_))
      if (r.step <= step) kept += r.to_json().dump() + "\n";
  write_file_atomic(path_, kept);
  out_.open(path_, std::ios::app);
  if (!out_) throw std::runtime_error("cannot open " + path_ + ": " + std::strerror(errno));
}

void RunLog::append(const StepRecord& record) {
  if (!(out_ << record.to_json().dump() << "\n" << std::flush))
    throw std::runtime_error("cannot write " + path_ + ": " + std::strerror(errno) + " (step " +
                             std::to_string(record.step) + "'s metrics would be lost)");
}

std::vector<StepRecord> RunLog::read(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + " is missing or unreadable");
  std::vector<StepRecord> records;
  for (std::string line; std::getline(in, line);) {
    try {
      records.push_back(StepRecord::from_json(parse_bounded_json<nlohmann::ordered_json>(line)));
    } catch (const std::exception&) {  // a line cut by a crash
    }
  }
  return records;
}

int64_t collapse_streak(const std::string& path) {
  if (!std::filesystem::exists(path)) return 0;
  int64_t streak = 0;
  for (const StepRecord& r : RunLog::read(path))
    if (!r.collapse.is_null()) streak = diag::CollapseAlarm::logged_streak(r.collapse);
  return streak;
}

}  // namespace mhc::train
