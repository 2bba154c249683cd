// Package filter is kube-efvi's model of ef_vi filters: which packets a VI
// receives, who owns them, and what a pod may ask for. It knows nothing about
// the data plane; the agent programs XDP maps from it.
//
// # Mapping to ef_vi (lib/ciul/filter.c, etherfabric/vi.h)
//
//	ef_filter_spec_init(fs, flags)          Spec{Flags: flags}
//	ef_filter_spec_set_ip4_local/full       (*Spec).SetIP4Local / SetIP4Full
//	ef_filter_spec_set_ip6_local/full       (*Spec).SetIP6Local / SetIP6Full
//	ef_filter_spec_set_vlan                 (*Spec).SetVLAN
//	ef_filter_spec_set_eth_local            (*Spec).SetEthLocal(vlan or VLANAny, mac)
//	ef_filter_spec_set_eth_type / ip_proto  (*Spec).SetEthType / SetIPProto
//	ef_filter_spec_set_{unicast,multicast}_{all,mismatch}
//	ef_filter_spec_set_port_sniff / tx_port_sniff / block_kernel[_unicast|_multicast]
//	ef_vi_filter_add / ef_vi_filter_del     (*Table).Add / Del (cookie)
//	freeing a VI removes its filters        (*Table).RemoveOwner
//	efsink's filter-spec argument           Parse / ParseList / Spec.String
//
// Errors are *Error values carrying ef_vi's errno: setter-level bad
// combinations are EPROTONOSUPPORT, add-time invalid specs EINVAL, conflicts
// EEXIST/EBUSY, policy refusals EPERM, deleting an unknown cookie ENOENT.
//
// # Setter rules (decided from the ef_vi reference where filter.c is not quoted)
//
//   - IP setters need a spec with at most a VLAN (IP twice, IP on a MAC,
//     ethertype or ipproto spec: EPROTONOSUPPORT); the protocol must be UDP or
//     TCP (EPROTONOSUPPORT). They set local host+port, IP protocol and the
//     family's EtherType; remote host+port only when rhost is not 0 ("full").
//   - SetVLAN: once per spec; not on sniff/tx-sniff/block specs.
//   - SetEthLocal: once; not with IP, all/mismatch, sniff/tx-sniff/block.
//   - SetEthType / SetIPProto: once; not with IP, with each other,
//     all/mismatch or sniff/tx-sniff/block; fine with MAC and VLAN.
//   - all/mismatch setters need a spec with at most a VLAN (VLAN+all is then
//     EINVAL at Validate, VLAN+mismatch is valid).
//   - sniff, tx-sniff and block-kernel need an empty spec and take nothing else.
//
// Bad argument values (VLAN id > 4095, port 0, wrong address family,
// unspecified local host, zoned or IPv4-mapped addresses, multicast source)
// are EINVAL at the setter.
//
// # Deliberate differences from ef_vi
//
//   - Ports and hosts are host-order Go values (uint16, netip.Addr), not be16/be32.
//   - A full filter's remote port is ignored when the remote host is 0, as in
//     ef_vi; a remote port 0 with a real remote host is EINVAL.
//   - ipproto and ethertype are separate filters (never both in one spec).
//     EtherTypes < 0x0600 and VLAN TPIDs (0x8100, 0x88a8, 0x9100) are EINVAL.
//   - Validate also requires fields whose match bit is clear to be zero, so
//     that == on valid specs means "same filter".
//   - Flags never make filters different for conflicts (Table compares
//     criteria only). MCAST_LOOP_RECEIVE is accepted on any spec and kept, as
//     ef_vi does, although only IP multicast filters use it.
//   - Block-kernel filters may be owned by several VIs (the sfc driver
//     reference-counts kernel blocks); sniff and tx-sniff have one owner per
//     port (EBUSY for another VI).
//   - Policy (EPERM) replaces CAP_NET_ADMIN checks: pods have no capabilities.
//
// # Text grammar (Grammar)
//
// efsink's grammar, extended so that every valid Spec prints and parses back
// (Parse(s.String()) == s), except tx-sniff: the model keeps it
// (SetTxPortSniff) but Parse refuses "tx-sniff" with EOPNOTSUPP, because no
// data plane delivers a port's TX copies and the grammar must not accept what
// the data plane refuses. Otherwise: options (mcastloop-rx, exclusive-rxq,
// shared-rxq, vid=N) may follow the colon of any kind; eth takes an optional
// ",ipproto=P" or ",ethertype=T" (MAC+ip_proto, MAC+ethertype); ethertype,
// ipproto and mismatch take vid=N. Bare "sniff" means promiscuous (efsink's
// default); String prints "sniff:promisc" or "sniff:no-promisc". IPv6 hosts
// are bracketed ([fd00::1]:5000). Parse requires the host of udp:/tcp: specs;
// ParseWithDefaultHost fills it in ("udp:5000" → pod IP). Examples:
//
//	udp:10.0.0.1:5000    tcp:vid=5,[fd00::1]:80,[fd00::2]:4000    udp:mcastloop-rx,239.1.2.3:5000
//	eth:vid=7,02:00:00:00:00:01    eth:01:00:5e:00:00:01,ipproto=2    eth:02:00:00:00:00:01,ethertype=0x88f7
//	ethertype:0x88f7    ipproto:icmp    unicast-mis:vid=5    sniff:no-promisc    block-kernel-multicast
package filter
