// A small flag parser for the `mhc` subcommands: `--name value` and bare `--switch` flags, each
// declared with a default and a help line, so `--help` lists every flag and an unknown or malformed
// flag is a one-line error naming it and what is accepted.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "mhc/parse.h"

namespace mhc::cli {

class Args {
 public:
  Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

  // Declare before parse(). A number's range is declared with its flag and read by integer() and
  // real(). A switch takes no value and defaults to false.
  Args& flag(const std::string& name, const std::string& default_value, const std::string& help, ValueRange range = {});
  Args& toggle(const std::string& name, const std::string& help);
  // --old_name is read as --name (an earlier spelling kept working); declare name first.
  Args& alias(const std::string& old_name, const std::string& name);

  // Throws std::invalid_argument on an unknown flag or a missing value. Returns false after
  // printing the help when --help was given.
  bool parse(const std::vector<std::string>& argv);

  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double real(const std::string& name) const;
  bool on(const std::string& name) const;
  // A comma-separated list ("512,1024"), and one of whole numbers, each in the flag's range.
  std::vector<std::string> list(const std::string& name) const;
  std::vector<int64_t> integers(const std::string& name) const;

  std::string help() const;
  const std::string& command() const { return command_; }

  // Whether the command line gave this flag (the preset and a config file fill the others).
  bool given(const std::string& name) const { return given_.count(name) > 0; }
  bool declared(const std::string& name) const { return flags_.count(name) > 0; }
  void set(const std::string& name, const std::string& value);
  // Names in declaration order.
  const std::vector<std::string>& names() const { return order_; }
  // "unknown flag --lrr (did you mean --lr?)": the closest declared name, or the accepted list.
  std::string unknown_flag_message(const std::string& name, const std::string& prefix = "--") const;

 private:
  struct Flag {
    std::string value, help;
    bool is_toggle;
    ValueRange range;
  };
  const Flag& get(const std::string& name) const;
  std::string command_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
  std::map<std::string, std::string> aliases_;  // old name -> name
  std::set<std::string> given_;
};

}  // namespace mhc::cli
