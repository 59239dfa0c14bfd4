// The subcommands of `mhc`, one function each, taking the arguments after the subcommand's name
// and returning the process exit status. Bad input throws std::invalid_argument (or
// c10::ValueError, TypeError, IndexError: exit status 2); other errors are failures (exit status 1).
#pragma once

#include <string>
#include <vector>

namespace mhc::cli {

int analyze(const std::vector<std::string>& argv);
int compare(const std::vector<std::string>& argv);
int launch(const std::vector<std::string>& argv);
// In a rank that `mhc launch` started: the rank dies with the launcher (a parent-death signal), as
// torchrun's workers do, so that no orphan trains on holding the run folder's lock. Elsewhere: nothing.
void die_with_launcher();
int bench_layer(const std::vector<std::string>& argv);
int bench_train(const std::vector<std::string>& argv);
int bench_memory(const std::vector<std::string>& argv);
int bench_pipeline(const std::vector<std::string>& argv);
int bench_decode(const std::vector<std::string>& argv);
int train(const std::vector<std::string>& argv);
int sample(const std::vector<std::string>& argv);
int eval(const std::vector<std::string>& argv);

}  // namespace mhc::cli
