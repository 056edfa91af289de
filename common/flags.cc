#include "common/flags.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace sambay {

FlagSet::FlagSet(std::string program, std::string env_prefix)
    : program_(std::move(program)), env_prefix_(std::move(env_prefix)) {}

void FlagSet::Add(const std::string& name, Type type, void* target, const std::string& help) {
  Flag f{type, target, help, ""};
  switch (type) {
    case Type::kString:
      f.default_text = *static_cast<std::string*>(target);
      break;
    case Type::kInt:
      f.default_text = absl::StrCat(*static_cast<int64_t*>(target));
      break;
    case Type::kDouble:
      f.default_text = absl::StrCat(*static_cast<double*>(target));
      break;
    case Type::kBool:
      f.default_text = *static_cast<bool*>(target) ? "true" : "false";
      break;
  }
  flags_[name] = std::move(f);
}

void FlagSet::AddString(const std::string& name, std::string* target, const std::string& help) {
  Add(name, Type::kString, target, help);
}
void FlagSet::AddInt(const std::string& name, int64_t* target, const std::string& help) {
  Add(name, Type::kInt, target, help);
}
void FlagSet::AddDouble(const std::string& name, double* target, const std::string& help) {
  Add(name, Type::kDouble, target, help);
}
void FlagSet::AddBool(const std::string& name, bool* target, const std::string& help) {
  Add(name, Type::kBool, target, help);
}

std::string FlagSet::EnvName(const std::string& name) const {
  return env_prefix_ + absl::AsciiStrToUpper(absl::StrReplaceAll(name, {{"-", "_"}}));
}

absl::Status FlagSet::Set(const std::string& name, Flag& flag, const std::string& value,
                          const std::string& origin) {
  auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": \"", value, "\" is not ", what));
  };
  switch (flag.type) {
    case Type::kString:
      *static_cast<std::string*>(flag.target) = value;
      break;
    case Type::kInt: {
      int64_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("an integer");
      *static_cast<int64_t*>(flag.target) = v;
      break;
    }
    case Type::kDouble: {
      double v;
      if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) return bad("a finite number");
      *static_cast<double*>(flag.target) = v;
      break;
    }
    case Type::kBool: {
      bool v;
      if (!absl::SimpleAtob(value, &v)) return bad("a boolean (true/false)");
      *static_cast<bool*>(flag.target) = v;
      break;
    }
  }
  flag.source = origin.rfind("--", 0) == 0 ? "flag" : "env";
  return absl::OkStatus();
}

absl::Status FlagSet::Parse(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return Parse(args, [](const char* n) { return std::getenv(n); });
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args,
                            const std::function<const char*(const char*)>& getenv) {
  for (auto& [name, flag] : flags_) {
    const std::string env = EnvName(name);
    if (const char* v = getenv(env.c_str()); v != nullptr) {
      if (absl::Status s = Set(name, flag, v, env); !s.ok()) return s;
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") return absl::CancelledError(kHelpRequested);
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", a, "\""));
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    name = absl::StrReplaceAll(name, {{"_", "-"}});
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!has_value) {
      if (it->second.type == Type::kBool &&
          (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": missing value"));
      }
    }
    if (absl::Status s = Set(name, it->second, value, "--" + name); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage() const {
  std::string out =
      absl::StrCat("usage: ", program_, " [flags]\n\nflags (environment variable; default):\n");
  for (const auto& [name, flag] : flags_) {
    absl::StrAppend(&out, "  --", name, " (", EnvName(name), "; default \"", flag.default_text,
                    "\")\n      ", flag.help, "\n");
  }
  return out;
}

nlohmann::json FlagSet::Effective() const {
  nlohmann::json values = nlohmann::json::object(), sources = nlohmann::json::object();
  for (const auto& [name, flag] : flags_) {
    switch (flag.type) {
      case Type::kString:
        values[name] = *static_cast<const std::string*>(flag.target);
        break;
      case Type::kInt:
        values[name] = *static_cast<const int64_t*>(flag.target);
        break;
      case Type::kDouble:
        values[name] = *static_cast<const double*>(flag.target);
        break;
      case Type::kBool:
        values[name] = *static_cast<const bool*>(flag.target);
        break;
    }
    if (flag.source != "default") sources[name] = flag.source;
  }
  return {{"flags", values}, {"set_by", sources}};
}

}  // namespace sambay
