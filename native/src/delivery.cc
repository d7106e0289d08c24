// SPDX-License-Identifier: Apache-2.0
// Delivery from the client's own address (see docs/architecture.md, 'Delivery
// from the client address'): the destination proxy opens its connection to a
// pod inside the pod's network namespace, bound to the client's address with
// IP_TRANSPARENT, and marked. In that namespace the pod accepts it over
// loopback; tcp_fwmark_accept gives the pod's socket the mark (fwmark_reflect
// the kernel's own replies, such as a RST), and a policy
// rule sends everything with the mark (the pod's replies) to a table that
// delivers every address locally, so replies reach the proxy's socket instead
// of leaving through eth0 toward the real client.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace nodemesh {
namespace {

// The JavaScript thread's own netns, opened once: transparentSocket() returns to it.
int own_netns = -1;

// transparentSocket(nsfd, family, source, mark) -> fd: a non-blocking TCP
// socket created in the netns `nsfd`, bound to `source` (port chosen at
// connect, per destination) with IP_TRANSPARENT and SO_MARK `mark`, not yet
// connected. The calling thread is in the pod's netns only for the socket()
// call; if it could not return to its own, the process aborts rather than go
// on in a pod's namespace.
Napi::Value TransparentSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t nsfd, family, mark;
  std::string source;
  if (!ArgU32(info, 0, "transparent_socket", "netns fd", &nsfd) ||
      !ArgU32(info, 1, "transparent_socket", "family", &family) ||
      !ArgString(info, 2, "transparent_socket", "source address", &source) ||
      !ArgU32(info, 3, "transparent_socket", "mark", &mark))
    return env.Undefined();
  if (family != 4 && family != 6) return ThrowBpf(env, "transparent_socket", EINVAL, "family must be 4 or 6");
  sockaddr_storage ss{};
  socklen_t sslen;
  if (family == 4) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    if (inet_pton(AF_INET, source.c_str(), &a->sin_addr) != 1)
      return ThrowBpf(env, "transparent_socket", EINVAL, source + " is not an IPv4 address");
    sslen = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, source.c_str(), &a->sin6_addr) != 1)
      return ThrowBpf(env, "transparent_socket", EINVAL, source + " is not an IPv6 address");
    sslen = sizeof(*a);
  }
  if (own_netns < 0) {
    own_netns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own_netns < 0) return ThrowBpf(env, "transparent_socket", errno, "open this thread's netns");
  }
  if (setns(static_cast<int>(nsfd), CLONE_NEWNET) != 0)
    return ThrowBpf(env, "transparent_socket", errno, "enter the pod's netns (needs CAP_SYS_ADMIN)");
  int s = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int socket_err = errno;
  if (setns(own_netns, CLONE_NEWNET) != 0) {
    fprintf(stderr, "nodemesh: cannot return to the proxy's network namespace (%s): aborting\n", strerror(errno));
    abort();
  }
  if (s < 0) return ThrowBpf(env, "transparent_socket", socket_err, "socket in the pod's netns");
  int one = 1;
  const char* step = nullptr;
  if (family == 4 ? setsockopt(s, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) != 0
                  : setsockopt(s, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one)) != 0)
    step = "set IP_TRANSPARENT (needs CAP_NET_ADMIN)";
  else if (setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
    step = "set SO_MARK (needs CAP_NET_ADMIN)";
  else if (setsockopt(s, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0)
    step = "set IP_BIND_ADDRESS_NO_PORT";
  else if (bind(s, reinterpret_cast<sockaddr*>(&ss), sslen) != 0)
    step = "bind to the client's address";
  if (step != nullptr) {
    int err = errno;
    close(s);
    return ThrowBpf(env, "transparent_socket", err, std::string(step) + " " + source);
  }
  return Napi::Number::New(env, s);
}

// --- the pod namespace's rule and table, over rtnetlink ---

struct NlRequest {
  nlmsghdr h;
  union {
    fib_rule_hdr rule;
    rtmsg route;
  } body;
  char attrs[128];
};

void PutU32(NlRequest* r, uint16_t type, uint32_t value) {
  auto* a = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(r) + NLMSG_ALIGN(r->h.nlmsg_len));
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(sizeof(value));
  memcpy(RTA_DATA(a), &value, sizeof(value));
  r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

// Sends one request and reads its ack: 0 or an errno.
int Talk(int fd, NlRequest* r, uint32_t seq) {
  r->h.nlmsg_seq = seq;
  if (send(fd, r, r->h.nlmsg_len, 0) < 0) return errno;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) return -static_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
    }
  }
}

struct DeliveryPlan {
  bool on;
  uint32_t mark, mask, table, priority;
};

// Adds (or removes) the rule and the local default route for one family;
// "already there" (adding) and "not there" (removing) are success.
int Family(int fd, int af, const DeliveryPlan& p, uint32_t* seq, std::string* step) {
  NlRequest r{};
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(fib_rule_hdr));
  r.h.nlmsg_type = p.on ? RTM_NEWRULE : RTM_DELRULE;
  r.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (p.on ? NLM_F_CREATE | NLM_F_EXCL : 0);
  r.body.rule.family = static_cast<uint8_t>(af);
  r.body.rule.action = FR_ACT_TO_TBL;
  PutU32(&r, FRA_TABLE, p.table);
  PutU32(&r, FRA_FWMARK, p.mark);
  PutU32(&r, FRA_FWMASK, p.mask);
  PutU32(&r, FRA_PRIORITY, p.priority);
  int err = Talk(fd, &r, ++*seq);
  if (err != 0 && !(p.on && err == EEXIST) && !(!p.on && (err == ENOENT || err == ESRCH))) {
    *step = std::string(p.on ? "add" : "remove") + (af == AF_INET ? " the IPv4" : " the IPv6") + " fwmark rule";
    return err;
  }
  NlRequest t{};
  t.h.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
  t.h.nlmsg_type = p.on ? RTM_NEWROUTE : RTM_DELROUTE;
  t.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (p.on ? NLM_F_CREATE | NLM_F_REPLACE : 0);
  t.body.route.rtm_family = static_cast<uint8_t>(af);
  t.body.route.rtm_table = RT_TABLE_UNSPEC;
  t.body.route.rtm_protocol = RTPROT_STATIC;
  t.body.route.rtm_scope = RT_SCOPE_HOST;
  t.body.route.rtm_type = RTN_LOCAL;
  PutU32(&t, RTA_TABLE, p.table);
  PutU32(&t, RTA_OIF, 1);  // lo: ifindex 1 in every netns
  err = Talk(fd, &t, ++*seq);
  if (err != 0 && !(!p.on && (err == ENOENT || err == ESRCH))) {
    *step = std::string(p.on ? "add" : "remove") + (af == AF_INET ? " the IPv4" : " the IPv6") + " local route in table " + std::to_string(p.table);
    return err;
  }
  return 0;
}

class DeliveryWorker : public Napi::AsyncWorker {
 public:
  DeliveryWorker(Napi::Env env, std::string path, DeliveryPlan plan)
      : Napi::AsyncWorker(env, "nodemesh:netnsDelivery"), path_(std::move(path)), plan_(plan), deferred_(env) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  // setns() on a thread made for it, which ends right after: no thread of
  // Node's pool ever changes namespace.
  void Execute() override {
    std::thread t([this] { Run(); });
    t.join();
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      ThrowBpf(env, "netns_delivery", err_, step_ + " in " + path_);
      deferred_.Reject(env.GetAndClearPendingException().Value());
      return;
    }
    deferred_.Resolve(env.Undefined());
  }

 private:
  void Run() {
    int nsfd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) return Fail(errno, "open netns");
    int r = setns(nsfd, CLONE_NEWNET);
    int e = errno;
    close(nsfd);
    if (r != 0) return Fail(e, "enter netns");
    if (plan_.on) {
      // /proc/sys/net follows the netns of the thread that opens it.
      // tcp_fwmark_accept: the pod's socket takes the mark of the SYN, so its
      // replies carry it. fwmark_reflect: so do the kernel's own replies with
      // no socket (a RST from a closed port, an ICMP error), or a connect to a
      // pod that is not listening would wait for its timeout instead of
      // being refused at once.
      static const char* const knobs[] = {"ipv4/tcp_fwmark_accept", "ipv4/fwmark_reflect", "ipv6/fwmark_reflect"};
      for (const char* knob : knobs) {
        std::string path = std::string("/proc/sys/net/") + knob;
        if (strncmp(knob, "ipv6/", 5) == 0 && access("/proc/sys/net/ipv6", F_OK) != 0) continue;
        int f = open(path.c_str(), O_WRONLY | O_CLOEXEC);
        if (f < 0) return Fail(errno, "open " + path);
        ssize_t w = write(f, "1\n", 2);
        e = errno;
        close(f);
        if (w != 2) return Fail(e, "set " + path);
      }
    }
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return Fail(errno, "open rtnetlink");
    uint32_t seq = 0;
    int err = Family(fd, AF_INET, plan_, &seq, &step_);
    // A pod netns with IPv6 disabled has no IPv6 rules to keep.
    if (err == 0 && access("/proc/sys/net/ipv6", F_OK) == 0) {
      err = Family(fd, AF_INET6, plan_, &seq, &step_);
      if (err == EAFNOSUPPORT) err = 0;
    }
    close(fd);
    if (err != 0) err_ = err;
  }

  void Fail(int err, const std::string& step) {
    err_ = err;
    step_ = step;
  }

  std::string path_;
  DeliveryPlan plan_;
  Napi::Promise::Deferred deferred_;
  int err_ = 0;
  std::string step_;
};

// netnsDelivery(path, on, mark, mask, table, priority) -> Promise<void>
Napi::Value NetnsDelivery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  DeliveryPlan plan{};
  if (!ArgString(info, 0, "netns_delivery", "netns path", &path)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsBoolean()) return ThrowBpf(env, "netns_delivery", EINVAL, "on must be a boolean");
  plan.on = info[1].As<Napi::Boolean>().Value();
  if (!ArgU32(info, 2, "netns_delivery", "mark", &plan.mark) || !ArgU32(info, 3, "netns_delivery", "mask", &plan.mask) ||
      !ArgU32(info, 4, "netns_delivery", "table", &plan.table) || !ArgU32(info, 5, "netns_delivery", "priority", &plan.priority))
    return env.Undefined();
  auto* w = new DeliveryWorker(env, path, plan);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitDelivery(Napi::Env env, Napi::Object exports) {
  exports.Set("transparentSocket", Napi::Function::New(env, TransparentSocket, "transparentSocket"));
  exports.Set("netnsDelivery", Napi::Function::New(env, NetnsDelivery, "netnsDelivery"));
}

}  // namespace nodemesh
