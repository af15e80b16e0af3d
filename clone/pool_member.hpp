// The warm pool's zygote and members (clone/pool_member.cpp), for the pool's side (clone/pool.cpp).
#pragma once

#include <string>
#include <utility>

#include "clone/clones.hpp"

namespace vmm::clone::pool_member {

/// Sends `text` as one message (errors ignored: the other side's end is how it learns).
void send_text(int fd, const std::string& text);
/// One message from `sock`: its text and the descriptor it carried (-1 if none; then the text may
/// say why). Empty text and -1 on EOF.
std::pair<std::string, int> receive_with_fd(int sock);
/// The zygote's side: forks a member for each name it receives and sends back "INDEX PID" with the
/// member's socket (or "INDEX error WHY"), INDEX the request's, so that a late answer is never
/// taken for the next request's. Ends when the pool's end closes. Never returns.
[[noreturn]] void run_zygote(OpenTemplate& t, const CloneOptions& o, int control);

}  // namespace vmm::clone::pool_member
