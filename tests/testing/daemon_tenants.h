// The tenants the daemon's end-to-end tests configure: alice and bob
// (ordinary) and root (admin), with their tokens passed to the daemon
// through the environment (token_env).
#pragma once

#include <string>
#include <vector>

namespace poolkeeper::testing {

inline const std::string kAlice = "alice-token-0123456789";
inline const std::string kBob = "bob-token-0123456789ab";
inline const std::string kRoot = "root-token-0123456789a";

// ALICE_TOKEN, BOB_TOKEN and ROOT_TOKEN for DaemonProcess.
inline std::vector<std::string> token_env() {
  return {"ALICE_TOKEN=" + kAlice, "BOB_TOKEN=" + kBob, "ROOT_TOKEN=" + kRoot};
}

}  // namespace poolkeeper::testing
