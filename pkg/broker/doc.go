// Package broker is the per-allocation unix-socket protocol through which the
// node agent hands a pod its VI as file descriptors (docs/architecture.md,
// "The VI is passed to the pod, not shared with it").
// The pod's SDK is the client ([Dial], [Client]); the agent is the server
// ([Listen], [Server]) and supplies the resources through a [Session] per
// connection. The model is Solarflare's cluster daemon: ef_pd_alloc_by_name
// asks solar_clusterd over a unix socket, which passes back a driver fd.
//
// The socket is the capability: the agent mounts it into one container only.
// The server still checks the peer (SO_PEERCRED) with an [Authorizer] before
// anything else, and frees everything a client held when its connection ends
// for any reason (BYE, EOF, killed process, protocol error, shutdown) by
// calling [Session.Close] exactly once.
//
// # Transport
//
// AF_UNIX SOCK_SEQPACKET: one record = one frame, so message boundaries come
// from the kernel. File descriptors ride with a reply as SCM_RIGHTS. Every
// socket is created with SOCK_CLOEXEC and every recvmsg uses
// MSG_CMSG_CLOEXEC, so no fd is ever inheritable. The socket file is created
// with mode 0600 (0660, or 0666 inside a per-container directory) and its owner set by a hook before listen(2), so
// nobody can connect while the mode is still the umask's. A zero-length
// record is indistinguishable from EOF on SOCK_SEQPACKET and closes the
// connection.
//
// # Frame
//
// All integers are little-endian. A frame is at most [MaxMessageSize]
// (64 KiB) bytes: a 12-byte header and a payload.
//
//	offset size field    value
//	0      2    magic    0xEF71 (bytes 71 EF)
//	2      1    version  1
//	3      1    type     request 0x01..0x0B; OK reply = request|0x80; ERROR = 0xFF
//	4      4    id       request id chosen by the client (never 0), echoed by the reply
//	8      4    length   payload bytes; must equal the record length - 12
//	12     len  payload  per type, below
//
// Request ids are never 0. The server answers a request with id 0 as
// malformed, with an ERROR that echoes id 0; a client never sends id 0, so an
// ERROR with id 0 tells it the connection is broken (it fails every later
// request). Replies always echo the request's id.
//
// Strings are a u16 byte length followed by that many bytes of UTF-8 with no
// control characters ("str" below); lists are a u16 count followed by the
// entries. Reserved fields must be zero. Nothing may follow the last field.
// Object ids (pd, memreg, vi, cookie) are non-zero in every request and reply.
//
//	type  name        request payload                                  OK reply payload                              fds
//	0x01  HELLO       version u16 (>=1), rsvd u16, caps u64,            version u16, rsvd u16, caps u64, mtu u32,     0
//	                  name str (0..64)                                  mac [6]u8, rsvd u16, pool str (1..253),
//	                                                                    ifname str (1..15), ndev u16 (<=64) +
//	                                                                    ndev x str (1..128), naddr u16 (<=16) +
//	                                                                    naddr x (family u8 4|6, 4|16 bytes)
//	0x02  ALLOC_PD    flags u32 (ef_pd_flags)                           pd u32                                        0
//	0x03  REG_MEM     pd u32, flags u32 (=0), size u64 (bytes,          memreg u32, chunk u32 (2^n, 2048..65536),     1: memory (memfd)
//	                  multiple of 2048, <= 64 GiB)                      size u64 (multiple of chunk)
//	0x04  ALLOC_VI    pd u32, memreg u32, evq i32, rxq i32, txq i32     vi u32, flags u32, queue u32, evq u32         1: the VI (XSK)
//	                  (each -1 default, 0 none, <= 65536; not rxq=txq=0), (<= 2^21), rx u32, tx u32, fill u32, comp u32
//	                  flags u32 (ef_vi_flags)                           (0 or 2^n <= 2^20; rx and fill both 0 or both
//	                                                                    not, tx and comp too; not all 0), frame u32
//	                                                                    (2^n, 2048..65536), headroom u32 (< frame)
//	0x05  FILTER_ADD  vi u32, flags u32 (ef_filter_flags),              cookie u64                                    0
//	                  spec str (1..256, efsink grammar)
//	0x06  FILTER_DEL  vi u32, rsvd u32, cookie u64                      (empty)                                       0
//	0x07  STATS       vi u32, flags u32 (bit 0: reset)                  n u16 (<=256) + n x (name str (1..64,          0
//	                                                                    [a-z0-9_.-], unique), value u64)
//	0x08  FREE_VI     vi u32                                            (empty)                                       0
//	0x09  FREE_MEM    memreg u32                                        (empty)                                       0
//	0x0A  FREE_PD     pd u32                                            (empty)                                       0
//	0x0B  BYE         (empty)                                           (empty), sent after everything is freed;      0
//	                                                                    then the server closes
//	0xFF  ERROR       -                                                 errno u32 (1..4095, Linux), message str       0
//	                                                                    (0..1024)
//
// # Rules
//
//   - Every request gets exactly one reply with its id: the OK reply or ERROR.
//     Requests never carry fds (any that arrive are closed, and the request
//     is malformed). An OK reply carries exactly the fds the table lists.
//   - The first request must be HELLO. The server authorizes the peer when it
//     connects; an unauthorized peer's first request is answered EPERM and the
//     connection closed. The session is created at HELLO; caps in the HELLO
//     reply are the intersection of both sides' caps; version is the lower of
//     the two. No HELLO within Config.HelloTimeout closes the connection.
//   - Malformed requests (request id 0, bad length, out-of-range field, bad
//     UTF-8, trailing bytes, fds attached, a known request before HELLO
//     (EPROTO), second HELLO (EPROTO), oversize record (EMSGSIZE),
//     unsupported frame version (EPROTONOSUPPORT)) get an ERROR (EINVAL
//     unless said) and count; after
//     Config.MaxMalformed of them the connection is closed after the reply. An
//     undecodable header (shorter than 12 bytes, wrong magic) closes the
//     connection without a reply. Unknown request types get EOPNOTSUPP and do
//     not count.
//   - Session errors carry ef_vi's errno values (EPERM, EEXIST, EBUSY, EINVAL,
//     EPROTONOSUPPORT, ENOMEM, ...); a client sees them as an [*Error], so
//     errors.Is(err, syscall.EEXIST) works.
//   - Over Config.MaxConns concurrent sessions, a HELLO gets EBUSY and the
//     connection is closed. A session slot is taken at HELLO: connections
//     that have not said HELLO hold none (at most Config.MaxPending of them
//     wait, each for at most Config.HelloTimeout; more are closed at accept).
//   - Timeouts: after HELLO, a connection with no request for
//     Config.IdleTimeout is closed unless its session holds resources (a pod
//     keeps its connection open and silent while it uses its VI); every reply
//     must be sent within Config.WriteTimeout, or the connection is closed (a
//     client that does not read its replies frees its session).
//   - REG_MEM's memory is populated by the client (every page allocated,
//     e.g. fallocate(2); [Client.RegisterMemory] does it) before ALLOC_VI
//     uses it, so the pages are charged to the client's memory cgroup; the
//     software backend answers ALLOC_VI on an unpopulated region with EINVAL.
//
// # Ownership of file descriptors
//
// A Session returns the fd to pass as an [FD]: [TransferFD] hands it to the
// server, which closes it exactly once after the send (successful or not);
// [LendFD] lets the server send it while the session keeps and later closes
// it. On the client, every fd received belongs to the caller as an *os.File
// ([MemRegion.File], [VI.File]); fds attached to an ERROR, a mismatched or a
// malformed reply are closed by the client. Closing the client's File does not
// free the agent's resource; FREE_* or closing the connection does.
package broker
