// Package efvi is the SDK pods use to drive a kube-efvi virtual interface
// (VI) with ef_vi's semantics from Go, with no privileges.
//
// The objects mirror ef_vi: a Driver (ef_driver_handle) talks to a Backend
// (the control plane: the broker client for the software backend; libciul
// over the agent's cluster socket for the hardware one), a PD (ef_pd) owns
// RegisteredMemory (ef_memreg: 2 KiB packet buffers) and VIs (ef_vi: event
// queue, RX descriptor ring, TX descriptor ring). Filters are added through
// the backend. The data path — post RX buffers, poll events, transmit,
// unbundle completions — is plain Go on memory shared with the kernel: no
// allocation and no system call per packet except the kicks AF_XDP needs.
//
// # Software backend
//
// A software VI is an AF_XDP socket (package xsk) that the agent created,
// bound to the VI's own veth queue and handed over together with the memfd
// of its UMEM. ef_addr is the byte offset into that memory region (the UMEM
// offset): Memory.Addr(i) = i*2048. The fill ring is the RX descriptor
// ring, the TX ring the TX descriptor ring, and the SDK merges the RX ring
// and the completion ring into one ef_vi-style event queue. A VI uses
// exactly one memory region (one UMEM per socket).
// NewSoftwareVI / NewSoftwareVIFromFDs build a VI straight from the fds
// (tests, the broker client).
//
// # Backends and how a program picks one
//
// DialAgent(ctx, "") reads the allocation's environment (SelectBackend):
// $EFVI_SOCKET alone is a software pool; $EF_VI_CLUSTER_SOCKET with
// $EFVI_CLUSTER is a hardware pool, where the agent is the ef_vi cluster
// daemon. PD.AllocVirtualInterface returns a VirtualInterface of either
// backend (*VI or *HardwareVI), so one program runs on both. The hardware
// backend is cgo over libciul and is only in binaries built with
// `-tags onload` against an Onload installation (make build-onload
// ONLOAD_PREFIX=...); without it DialAgent on a hardware pool still does
// the cluster handshake in Go and returns ErrHardwareNotBuilt, saying what
// the agent offered. Everything of the hardware backend past the handshake
// (ef_driver_open onwards) runs only on a node with a Solarflare/AMD NIC
// and is untested here.
//
// # ef_vi mapping
//
//	ef_vi                              SDK                                  software backend                   hardware backend (-tags onload)
//	ef_driver_open / close             DialAgent / Driver.Close             broker socket session              ef_driver_open on /dev/sfc_char
//	ef_pd_alloc[_by_name|_with_vport]  Driver.AllocPD(ctx, PDRequest)       broker AllocPD; no vport           ef_pd_alloc_by_name($EFVI_CLUSTER); no vport
//	ef_pd_free                         PD.Free                              broker FreePD                      ef_pd_free (agent sees EOF)
//	ef_memreg_alloc / free             PD.RegisterMemory / .Free            agent's sealed memfd (UMEM)        SDK's own mmap (2 MiB huge pages if free), ef_memreg_alloc
//	ef_memreg_dma_addr                 Memory.Addr(i)                       offset in the region               real DMA address (per 4 KiB NIC page)
//	ef_vi_alloc_from_pd / ef_vi_free   PD.AllocVirtualInterface / Close     AF_XDP socket from the agent       ef_vi_alloc_from_pd from the cluster's VI set
//	ef_vi_instance, _get_mac, _mtu     VI.Instance, MAC, MTU                broker's VI id, port MAC/MTU       ef_vi_instance, ef_vi_get_mac, ef_vi_mtu
//	ef_vi_filter_add / del             VI.FilterAdd / FilterDel             broker, under the pod's policy     EOPNOTSUPP: the agent installs them (annotation)
//	ef_vi_receive_init / push / post   VI.ReceiveInit / Push / Post         fill ring                          C wrapper per call; RefillFrom: 64 per call
//	ef_vi_receive_space/fill/capacity  VI.ReceiveSpace / FillLevel / Cap    fill ring                          ef_vi's
//	ef_vi_receive_prefix_len           VI.ReceivePrefixLen                  0; frame at RxFrameOffset          ef_vi's; Event.Addr/Bytes/RxFrame skip it
//	ef_vi_receive_buffer_len           VI.ReceiveBufferLen                  chunk - headroom (1792)            ef_vi's minus the prefix
//	ef_vi_receive_set_discards         VI.ReceiveSetDiscards(mask)          computed in software               the NIC's (same flag values)
//	ef_vi_transmit_init/push/transmit  VI.TransmitInit / Push / Transmit    TX ring + kick                     C wrapper per call (transmit = 1 call)
//	ef_vi_transmit_unbundle            VI.TransmitUnbundle(&ev, ids)        matched by buffer, in order        unbundled during the poll; no cgo call
//	ef_vi_transmit_space/fill/capacity VI.TransmitSpace / FillLevel / Cap   TX ring                            ef_vi's, bounded by ids not unbundled
//	ef_eventq_poll                     VI.EventQPoll(evs []Event) int       RX + completion rings merged       1 cgo call decodes <= 64 events; 0 allocs
//	ef_eventq_has_event, _capacity     VI.EventQHasEvent, EventQCapacity    rings                              ef_vi's
//	ef_eventq_put                      VI.EventQPut(data) (any goroutine)   lock-free queue + eventfd          ef_eventq_put (ioctl)
//	ef_vi_prime + ef_eventq_wait       VI.Prime, Wait / WaitContext         poll(2) socket + eventfd           ef_vi_prime + poll(2) on the driver handle
//	ef_vi_stats_query                  VI.Stats()                           XDP_STATISTICS + SDK counters      EF10 no-desc/CRC/trunc/abort + SDK counters
//	EF_EVENT_TYPE_*, EF_EVENT_RX_*     Event{Type, Flags, Sub, Bytes, ...}  same numbers                       same numbers, decoded in C
//	ci_*_hdr_init (citools)            package frame                        -                                  -
//
// Events on the hardware backend: RX and RX_DISCARD carry RqID, Flags (SOP,
// CONT, MULTICAST), Bytes (cumulative, without the RX prefix), Len (this
// buffer), Addr (ef_addr of the data) and RxFrame; RX relies on EF10/EF100
// completing RX descriptors in order (X3/EFCT's RX_REF is not supported).
// TX and TX_ERROR carry Count ids, already unbundled. SW, OFLOW,
// RX_NO_DESC_TRUNC and RESET pass through (after RESET every call returns
// ErrReset). Flags asking for merged RX, packed stream or timestamps are
// refused at allocation. EventQPoll needs len(evs) >= 2 (ef_vi's minimum).
//
// # Deliberate differences from ef_vi (software backend)
//
//   - Memory: the app cannot register memory it allocated; RegisterMemory
//     asks the agent for a sealed memfd (the UMEM) and maps it. Buffers are
//     2 KiB chunks of it; ef_addr is an offset, not a DMA address.
//   - RX frame position: the kernel writes a frame at its chunk's start +
//     RxFrameOffset (XDP_PACKET_HEADROOM 256 + UMEM headroom), whatever the
//     offset of the posted address inside the chunk; there is no RX prefix
//     (ReceivePrefixLen = 0, Event.Bytes = frame length). Event.Addr and
//     RxFrame(ev) give the frame. The largest frame per buffer is
//     ReceiveBufferLen (1792 with 2 KiB buffers, like EF10's default).
//   - RqIDs: kept in a per-buffer table, so RX events carry the id given to
//     ReceiveInit (Onload's AF_XDP port reports buffer indices instead).
//     Posting the same buffer twice before it comes back overwrites its id.
//   - TX completions are matched by buffer (completion ring addresses), so
//     ids come out in submission order even if the kernel completes out of
//     order; a TX event carries Event.Count (<= 64) completions.
//   - TX_ERROR: a TransmitInit descriptor the kernel would reject (address
//     outside the region: RIGHTS; zero length or crossing the end of its
//     2 KiB buffer: 2BIG) is not posted. It takes its place in submission
//     order and comes out as a TX_ERROR event whose RqID (and unbundle) is
//     its id. The ring is never poisoned, unlike hardware.
//   - RX_DISCARD is computed in software under ReceiveSetDiscards:
//     DiscardL3CsumErr (IPv4 header checksum), DiscardL4CsumErr (UDP/TCP
//     checksum), DiscardEthLenErr (frame shorter than its IP length: TRUNC).
//     FCS/CRC errors never reach the kernel, so CRC_BAD is never reported.
//     DefaultDiscards checks the IPv4 header and truncation but NOT L4
//     checksums, unlike ef_vi, for two reasons: (1) frames sent by the
//     node's own kernel (another pod, the host) over veth carry offloaded,
//     incomplete L4 checksums (CHECKSUM_PARTIAL), which a check would wrongly
//     discard; (2) it costs a pass over every payload (~0.25 ns/byte here:
//     ~250 ns for a 1 KiB frame) that a NIC does for free. Enable it with
//     ReceiveSetDiscards(DefaultDiscards|DiscardL4CsumErr) for traffic that
//     only comes from the wire.
//   - Jumbo frames need the agent to bind with XDP_USE_SG; then buffers of
//     one frame carry SOP/CONT and cumulative Bytes as in ef_vi. Without it
//     the kernel drops over-size frames (Stats.RxDropped);
//     RX_NO_DESC_TRUNC is never produced.
//   - OFLOW means the kernel's RX ring (the event queue's RX half) was full
//     and frames were dropped (XDP_STATISTICS rx_ring_full grew); it is
//     noticed on idle kicks, not immediately. Events themselves are never
//     lost.
//   - RESET means the VI's device went away (the socket was unbound: kicks
//     return ENXIO). It is reported once; afterwards every call returns
//     ErrReset and the app must allocate a new VI. A device that is merely
//     down (ENETDOWN) is not a reset: frames stay queued.
//   - Wait polls the socket and an eventfd (for EventQPut); completions do
//     not wake poll(2), so with frames in flight Wait re-checks every 1 ms,
//     and it probes liveness every 100 ms (poll never reports an unbound
//     socket).
//   - Polling policy (Options.IdleKickAfter, default 100 µs): once polls
//     have found nothing for that long, EventQPoll pushes unpushed fill entries, does the
//     recvfrom kick (also the RESET probe), re-kicks a TX batch the kernel
//     left half done and reads XDP_STATISTICS. Keep the fill ring nearly
//     full (RefillFrom after every RX batch, and a fill ring as big as the
//     RX ring) to avoid no-descriptor drops under flood.
//   - Not supported by the software backend: RX_MULTI, timestamps, PIO,
//     CTPIO, transmitv (scatter), TX alternatives, VI sets (RSS), shared
//     event queues. ReceivePush kicks only if the kernel sets need_wakeup
//     (never in copy mode); TransmitPush kicks once per batch.
//   - Concurrency: as in ef_vi, a VI is driven by one goroutine; only
//     EventQPut may be called from others (lock-free).
//
// The hardware backend's differences are in the mapping table above; it
// has none of the software backend's emulations: the NIC does checksums,
// discards, jumbo frames and blocking natively.
package efvi
