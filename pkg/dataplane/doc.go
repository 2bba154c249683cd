// Package dataplane is the agent-side software data plane of kube-efvi: it
// gives one netdev (the "port", standing in for a Solarflare port) ef_vi
// filter semantics with XDP, and gives each VI a veth pair whose peer end
// carries the VI's AF_XDP socket (docs/architecture.md, "Software backend").
// Programs are generated with cilium/ebpf's asm package; there is no C and no
// clang.
//
// # Objects
//
//   - Port XDP program (prog_port.go, read top to bottom as named blocks):
//     parses Ethernet (+ one 802.1Q tag), IPv4 (IHL honoured), IPv6 (fixed
//     header), UDP and TCP, and looks the filters up most specific first, as
//     the NIC does: 5-tuple → local addr+port → MAC+EtherType → MAC+IP
//     protocol → MAC → EtherType → IP protocol → unicast/multicast-all →
//     unicast/multicast-mismatch. IPv4 local and full filters without a VLAN
//     (the common case) live in compact maps (local4: 8-byte key, full4: 16)
//     rather than the generic 48-byte-key map; when only such filters exist
//     the program takes a fast path that parses straight into the compact key,
//     otherwise the generic path walks every level and, at the full and local
//     levels, looks an IPv4 frame's VLAN-less key up in the compact map.
//     Steal is bpf_redirect_map(vi_devs, vi, XDP_DROP) to the VI's veth v<N>
//     (a plain DEVMAP array: VI ids are dense); replicate is a per-group
//     DEVMAP_HASH in a HASH_OF_MAPS with BPF_F_BROADCAST|BPF_F_EXCLUDE_INGRESS;
//     no match is XDP_PASS, or XDP_DROP while a block-kernel filter covers that
//     class. Per-kind bits in the config map skip empty lookup levels, so an
//     idle port costs one (inlined) array lookup per frame.
//   - Port TCX ingress program (sniff): bpf_skb_pull_data, then
//     bpf_clone_redirect to the sniffing VI's v<N>, then TCX_NEXT.
//   - Each VI has its own RX and TX programs (prog_vi.go) built with its
//     constants: id, source MAC and up to 4 IPv4 sources, so the hot path looks
//     up nothing that is fixed per VI. When its sources change the TX program
//     is rebuilt and swapped in by a link update (atomic); new sources are
//     allowed in the map before it goes live, stale ones removed after.
//   - VI RX program on v<N>p: counts, then bpf_redirect_map(xsks, vi, XDP_PASS).
//     With no XSK in the xskmap the fallback XDP_PASS hands the frame to
//     v<N>p's kernel stack, which drops it (no address). Harmless in
//     production; it lets tests observe delivery with AF_PACKET on v<N>p.
//   - VI TX program on v<N>: frames the pod's XSK sends leave v<N>p and arrive
//     here. Source MAC must be the VI's; IPv4/IPv6 source must be one of its
//     IPs (IPv4 compared inline, or in the allowed map beyond 4 sources;
//     IPv6 always in the map); ARP must carry the VI's MAC and IP as sender; one VLAN tag may
//     precede these. Anything else (other EtherTypes, truncated headers) is
//     dropped and counted as tx_spoof_drops. Passing frames go out of the port
//     (bpf_redirect_map to a one-entry DEVMAP): they are not looped back to
//     the host or to other VIs.
//
// # Semantics decided here
//
//   - VLAN: a filter without a VLAN matches untagged frames AND frames with
//     any tag (the tagged lookup is tried first, then the untagged one); a
//     filter with a VLAN matches only frames whose outer 802.1Q VID equals it
//     (PCP/DEI ignored). 802.1ad (0x88a8) outer tags are not parsed. Real NICs
//     strip tags before XDP unless rx VLAN offload is off.
//   - IP filters ignore the destination MAC, as ef_vi does. IPv4 fragments
//     (MF set or offset ≠ 0) and IPv4 headers with IHL < 5 never match IP
//     filters; the IP-protocol filter still matches fragments. IPv6 with an
//     extension header is "not UDP/TCP" (no IP filter match; the
//     IP-protocol filter sees the first next-header value).
//   - Unicast vs multicast is the destination MAC's I/G bit (broadcast is
//     multicast). Multicast IP and MAC filters, multicast-all and
//     multicast-mismatch always use a replicate group, so identical filters
//     from several VIs each get a copy (refcounted membership).
//   - Mismatch: software has no kernel filter table, so "mismatch" means "no
//     VI filter matched"; it ranks below all.
//   - Sniff sees what the kernel receives: frames stolen by VI filters are
//     not copied. Non-promiscuous sniff skips PACKET_OTHERHOST frames;
//     promiscuous includes them but does not put the netdev in promiscuous
//     mode. The kernel may move a VLAN tag to skb metadata before the clone.
//     tx-sniff is EOPNOTSUPP (the filter grammar refuses it too).
//   - Counters per VI (PERCPU_ARRAY): rx_* count every frame reaching v<N>p
//     (steal, replicate, sniff); rx_redirect_errors counts stolen frames the
//     port could not redirect (no devmap entry for the VI). XSK ring-full drops
//     are in the socket's XDP_STATISTICS, not here. Each filter has a hit
//     counter slot (FilterHits).
//
// # Pins and restart
//
// Maps and bpf_links are pinned in PortConfig.PinDir on a bpffs
// (EnsureBPFFS mounts one at /sys/fs/bpf if needed). Close releases the
// agent's handles only: traffic keeps flowing. Open on the same PinDir
// re-adopts: maps are loaded (layout checked), links updated to the freshly
// loaded programs (each VI's built from its sources in the maps; compact-
// eligible keys an earlier agent kept in the generic map are moved), filters, groups and VIs rebuilt from the maps; XSK fds
// live in the pods and their xskmap entries stay. Handles are {VI, Spec}
// and stay valid across restarts. Destroy removes links, pins and veths.
//
// # Traps
//
//   - veth's ndo_xdp_xmit drops silently unless the RECEIVING peer has an XDP
//     program. VI veths always do; when the port is a veth, its far end needs
//     one too (AttachPassXDP). Debug vanishing frames with the tracepoints
//     xdp:xdp_devmap_xmit and xdp:xdp_redirect_err in /sys/kernel/tracing.
//   - bpf_redirect_map's low flag bits are the action on lookup miss.
//   - AttachXSK never probes the fd (ebpf.NewMapFromFD would close a non-map
//     fd); the kernel rejects non-XSK fds in the xskmap update.
//   - Every fd is close-on-exec: cilium/ebpf and vishvananda/netlink open
//     theirs with CLOEXEC, os.WriteFile uses O_CLOEXEC.
//   - VI veths get IPv6 disabled so the kernel's router solicitations and DAD
//     probes do not show up as spoofed TX.
package dataplane
