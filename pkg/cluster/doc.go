// Package cluster serves the ef_vi "cluster" protocol: the unix-socket
// handshake by which libciul's ef_pd_alloc_by_name() obtains a protection
// domain (PD) and VI set that a privileged daemon allocated on a NIC port.
//
// The node agent is that daemon, one [Server] per hardware allocation, on a
// socket in the allocation's directory (the container sees its path in
// EF_VI_CLUSTER_SOCKET). The server is plain Go: it parses requests, checks
// them strictly and calls an [Allocator] (the hardware backend) for the PD
// and VI set; it knows nothing of the NIC.
//
// The wire protocol, as libciul's client (src/lib/ciul/ef_app_cluster.c)
// speaks it, on an AF_UNIX SOCK_STREAM connection:
//
//	client                          daemon (one sendmsg per reply)
//	"0 1\n"           version  ->   "1 0\n" ok, "1 1\n" version mismatch
//	"2 <name> <flags>\n" alloc ->   "3 0 <pd_res> <viset_res> <ifname>\n" + SCM_RIGHTS fd
//	                                "3 1 <errno> 0 0\n" on failure
//	close (ef_pd_free)         ->   EOF: the client is done
//
// The client reads each reply with one recvmsg into 16 bytes (version) or
// 128 bytes (allocate) and writes a NUL after what it read, so every reply
// here is one sendmsg shorter than that. A request is at most [MaxRequest]
// bytes (libciul's MSGLEN_MAX). Every request that is not a well-formed
// version or allocate request, in the right order, gets an errno reply
// ("3 1 <errno> 0 0\n": the client turns anything it does not expect into
// -EIO), a log line saying why, and the connection is closed. ENOENT means
// "no such cluster": libciul then falls back to ef_pd_alloc() on an interface
// of that name.
//
// The fd passed on success is the daemon's open /dev/sfc_char handle on
// which the PD and VI set were allocated; the server never closes it (it
// belongs to the allocation, freed on Release). Holding it is a capability
// over that PD and VI set, which is why there is one per allocation.
package cluster
