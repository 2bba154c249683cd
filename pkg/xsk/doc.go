// Package xsk drives Linux AF_XDP sockets (XSKs) without cgo, using
// golang.org/x/sys/unix. It has two halves that normally run in different
// processes:
//
//   - The agent side (privileged: CAP_NET_RAW to create the socket,
//     CAP_IPC_LOCK so UMEM pinning is not charged to RLIMIT_MEMLOCK):
//     [NewMemfd] makes the packet memory as a sealed memfd, [Create] makes the
//     socket, registers the memfd as its UMEM, sizes the four rings and binds
//     to (ifindex, queue). The agent then passes the socket fd and the memfd
//     to the pod (SCM_RIGHTS) together with the [Geometry].
//   - The user side (no privileges at all): [Map] takes the two fds and the
//     Geometry, mmaps the four rings from the socket and the memfd MAP_SHARED,
//     and returns [Rings]: lock-free single-producer/single-consumer ring
//     handles with cached indices and batch reserve/submit/peek/release,
//     plus kicks ([Kick*]) and [Statistics].
//
// # Who maps and unmaps what
//
// XDP_UMEM_REG pins the pages of the agent's mapping (pin_user_pages) and the
// kernel keeps its own (vmap'd) reference to them for as long as the UMEM
// lives, i.e. as long as any socket using it is open. The pages are the
// memfd's page-cache pages, so the pod's own MAP_SHARED mapping of the memfd
// sees exactly the memory the kernel writes into. Create therefore maps the
// memfd, registers it and unmaps it again before returning: the agent keeps
// no mapping at all, only the fds (which it may close once passed). The pod
// unmaps its rings and memory in [Rings.Close]. The memfd is sealed against
// shrinking and growing (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) so a pod can
// never truncate pages out from under the kernel.
//
// # Shared UMEM
//
// [Config.SharedUMEMFD] binds a second socket to the UMEM of an existing one
// (XDP_SHARED_UMEM) with its own fill and completion rings; the kernel allows
// this across devices and queues. Sockets that share a UMEM share packet
// memory: there is no isolation between them, so kube-efvi uses one socket
// per memory region (one VI per region) and offers sharing only to callers
// that own every socket involved.
//
// Ring indices follow the kernel's protocol (include/uapi/linux/if_xdp.h,
// tools/lib/bpf/xsk.h): the producer publishes with a release store, the
// consumer reads the producer with an acquire load. Go's sync/atomic
// operations are sequentially consistent, which is at least as strong.
package xsk
