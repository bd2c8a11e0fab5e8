// poolkeeper: the daemon and its command line.
//
//   poolkeeper serve --config examples/quickstart.toml
//   poolkeeper check-config examples/quickstart.toml
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <string>

#include "runtime/log.h"
#include "server/config.h"
#include "server/daemon.h"

namespace {

using namespace poolkeeper;

int check_config(const std::string& path) {
  auto config = server::load_config(path, server::process_environment());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  std::cout << path << ": ok (" << config->pools.size() << " pool"
            << (config->pools.size() == 1 ? "" : "s") << ", " << config->tenants.size() << " tenant"
            << (config->tenants.size() == 1 ? "" : "s") << ", listen " << config->server.host << ":"
            << config->server.port
            << (config->server.auth == server::AuthMode::kNone ? ", no authentication" : "") << ")\n";
  return 0;
}

int serve(const std::string& path) {
  auto config = server::load_config(path, server::process_environment());
  if (!config) {
    std::cerr << "poolkeeper: " << config.error().message << "\n";
    return 2;
  }
  return server::run_daemon(*config, runtime::stderr_log());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"poolkeeper: pools of warm sessions, served over HTTP"};
  app.require_subcommand(1);

  std::string serve_config;
  auto* serve_cmd = app.add_subcommand("serve", "Run the daemon");
  serve_cmd->add_option("-c,--config", serve_config, "The configuration file (TOML)")
      ->required()
      ->check(CLI::ExistingFile);

  std::string check_path;
  auto* check_cmd =
      app.add_subcommand("check-config", "Check a configuration file without starting anything");
  check_cmd->add_option("file", check_path, "The configuration file (TOML)")->required();

  CLI11_PARSE(app, argc, argv);
  if (*serve_cmd) return serve(serve_config);
  if (*check_cmd) return check_config(check_path);
  return 1;
}
