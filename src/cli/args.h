// A small flag parser for the `mhc` subcommands: `--name value` and bare `--switch` flags, each
// declared with a default and a help line, so `--help` lists every flag and an unknown or malformed
// flag is a one-line error naming it and what is accepted.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace mhc::cli {

class Args {
 public:
  Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

  // Declare before parse(). A switch takes no value and defaults to false.
  Args& flag(const std::string& name, const std::string& default_value, const std::string& help);
  Args& toggle(const std::string& name, const std::string& help);

  // Throws std::invalid_argument on an unknown flag or a missing value. Returns false after
  // printing the help when --help was given.
  bool parse(const std::vector<std::string>& argv);

  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t min, int64_t max) const;
  bool on(const std::string& name) const;
  // A comma-separated list ("512,1024").
  std::vector<std::string> list(const std::string& name) const;

  std::string help() const;

 private:
  struct Flag {
    std::string value, help;
    bool is_toggle;
  };
  const Flag& get(const std::string& name) const;
  std::string command_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
};

// Parses a whole number in [min, max]; throws std::invalid_argument naming the flag and the range.
int64_t parse_integer(const std::string& flag, const std::string& text, int64_t min, int64_t max);

}  // namespace mhc::cli
