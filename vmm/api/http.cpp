#include "vmm/api/http.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

namespace vmm::api {

namespace fs = std::filesystem;

Result<const HttpPlugin*> http_plugin() {
  static std::once_flag once;
  static Result<const HttpPlugin*> loaded = fail("not loaded");
  std::call_once(once, [] {
    // $VMM_HTTP_PLUGIN, or vmm-http.so beside the running binary.
    fs::path path;
    if (const char* env = std::getenv("VMM_HTTP_PLUGIN"); env && *env) {
      path = env;
    } else {
      std::error_code ec;
      const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
      if (ec) {
        loaded = fail("/proc/self/exe: {}", ec.message());
        return;
      }
      path = exe.parent_path() / "vmm-http.so";
    }
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      loaded = fail("the API's HTTP plugin: {}", ::dlerror());
      return;
    }
    auto entry = reinterpret_cast<const HttpPlugin* (*)()>(::dlsym(handle, "vmm_http_plugin"));
    const HttpPlugin* plugin = entry ? entry() : nullptr;
    if (!plugin || plugin->abi != kHttpAbi) {
      loaded = fail("{}: not a vmm HTTP plugin of this version", path.string());
      return;
    }
    loaded = plugin;  // never unloaded: its threads may outlive any one caller
  });
  return loaded;
}

Result<std::unique_ptr<HttpServer>> serve(const std::string& path, HttpHandler handler) {
  auto plugin = http_plugin();
  if (!plugin) return std::unexpected(plugin.error());
  std::string error;
  HttpServer* server = (*plugin)->serve(path, std::move(handler), error);
  if (!server) return fail("{}", error);
  return std::unique_ptr<HttpServer>(server);
}

Result<HttpResponse> call(const std::string& path, const HttpRequest& request, double timeout_s) {
  auto plugin = http_plugin();
  if (!plugin) return std::unexpected(plugin.error());
  HttpResponse response;
  std::string error;
  if (!(*plugin)->call(path, request, timeout_s, response, error)) return fail("{}", error);
  return response;
}

}  // namespace vmm::api
