/* C side of pkg/efvi's hardware backend (build tag onload): small wrappers
 * over libciul's macro/inline API (ef_eventq_poll, ef_vi_receive_*,
 * ef_vi_transmit*, EF_EVENT_*), so that a poll of up to 64 events is one cgo
 * call that decodes straight into the caller's Go []Event. Written against
 * Onload's public headers (etherfabric/*.h); no Onload code is copied here.
 * Only hw_onload.go includes this file. */
#ifndef KEFVI_HW_WRAP_H
#define KEFVI_HW_WRAP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <etherfabric/base.h>
#include <etherfabric/capabilities.h>
#include <etherfabric/ef_vi.h>
#include <etherfabric/memreg.h>
#include <etherfabric/pd.h>
#include <etherfabric/vi.h>
#include <etherfabric/internal/internal.h>

/* The SDK's Event, byte for byte (hw_onload.go checks the layout at compile
 * time). */
typedef struct {
  uint16_t type, flags, q, sub;
  uint32_t bytes, rq_id;
  uint64_t addr;
  uint16_t len, count;
  uint32_t seq;
} kefvi_event;

enum {
  KEFVI_EVENT_SIZE = sizeof(kefvi_event),
  KEFVI_OFF_BYTES = offsetof(kefvi_event, bytes),
  KEFVI_OFF_ADDR = offsetof(kefvi_event, addr),
  KEFVI_OFF_LEN = offsetof(kefvi_event, len),
  KEFVI_OFF_SEQ = offsetof(kefvi_event, seq),
  KEFVI_POLL_MAX = 64, /* raw events per poll call */
  KEFVI_REFILL_MAX = 64,
};

/* SDK-side counters, kept by the decoder. */
typedef struct {
  uint64_t rx_events, rx_discard_csum, rx_discard_trunc, rx_discard_other;
  uint64_t tx_completed, tx_errors, sw_events, oflows, resets;
} kefvi_counters;

/* One hardware VI: the ef_vi and the state the SDK keeps next to it, all in
 * C memory (Go keeps no pointer into Go memory here). */
typedef struct {
  ef_vi vi;
  ef_driver_handle dh;
  int prefix;
  /* RX: the region offset and ef_addr of every posted buffer, in post
   * order (EF10/EF100 complete RX descriptors in order). */
  uint32_t* rx_off;
  uint64_t* rx_addr;
  uint32_t rx_mask, rx_added, rx_removed;
  uint32_t rx_cum;
  int rx_cont;
  /* TX: ids of completed descriptors, unbundled during the poll, in
   * completion (= submission) order; Go pops them in TransmitUnbundle. */
  uint32_t* tx_ids;
  uint32_t tx_mask, tx_posted, tx_done;
  kefvi_counters c;
  /* Refill batch, filled by Go then posted in one call. */
  uint64_t refill_addr[KEFVI_REFILL_MAX];
  uint32_t refill_off[KEFVI_REFILL_MAX];
  uint32_t refill_id[KEFVI_REFILL_MAX];
} kefvi;

static inline uint32_t kefvi_pow2(uint32_t n) {
  uint32_t p = 1;
  while( p < n )
    p <<= 1;
  return p;
}

static kefvi* kefvi_new(void) {
  kefvi* k = calloc(1, sizeof(*k));
  if( k != NULL )
    k->dh = -1;
  return k;
}

/* kefvi_rings sizes the SDK's side tables after the VI is allocated. */
static int kefvi_rings(kefvi* k) {
  uint32_t rx = kefvi_pow2((uint32_t) ef_vi_receive_capacity(&k->vi) + 1);
  uint32_t tx = kefvi_pow2((uint32_t) ef_vi_transmit_capacity(&k->vi) + 1);
  k->rx_off = calloc(rx, sizeof(uint32_t));
  k->rx_addr = calloc(rx, sizeof(uint64_t));
  k->tx_ids = calloc(tx, sizeof(uint32_t));
  if( k->rx_off == NULL || k->rx_addr == NULL || k->tx_ids == NULL )
    return -ENOMEM;
  k->rx_mask = rx - 1;
  k->tx_mask = tx - 1;
  k->prefix = ef_vi_receive_prefix_len(&k->vi);
  return 0;
}

static void kefvi_free(kefvi* k) {
  if( k == NULL )
    return;
  free(k->rx_off);
  free(k->rx_addr);
  free(k->tx_ids);
  free(k);
}

/* ---- receive ---- */

static inline int kefvi_rx_init(kefvi* k, uint64_t addr, uint32_t id, uint32_t off) {
  int rc = ef_vi_receive_init(&k->vi, (ef_addr) addr, (ef_request_id) id);
  if( rc == 0 ) {
    uint32_t i = k->rx_added++ & k->rx_mask;
    k->rx_off[i] = off;
    k->rx_addr[i] = addr;
  }
  return rc;
}

static inline void kefvi_rx_push(kefvi* k) { ef_vi_receive_push(&k->vi); }

/* kefvi_refill posts the first n entries of the refill batch and pushes
 * once; it returns how many were posted (it stops when the ring is full). */
static inline int kefvi_refill(kefvi* k, int n) {
  int i;
  for( i = 0; i < n; ++i )
    if( kefvi_rx_init(k, k->refill_addr[i], k->refill_id[i], k->refill_off[i]) != 0 )
      break;
  if( i > 0 )
    ef_vi_receive_push(&k->vi);
  return i;
}

static inline int kefvi_rx_space(kefvi* k) { return ef_vi_receive_space(&k->vi); }
static inline int kefvi_rx_fill(kefvi* k) { return ef_vi_receive_fill_level(&k->vi); }
static inline int kefvi_rx_cap(kefvi* k) { return ef_vi_receive_capacity(&k->vi); }
static inline int kefvi_rx_buflen(kefvi* k) { return ef_vi_receive_buffer_len(&k->vi); }
static inline int kefvi_set_discards(kefvi* k, unsigned mask) {
  return ef_vi_receive_set_discards(&k->vi, mask);
}

/* ---- transmit ---- */

static inline int kefvi_tx_init(kefvi* k, uint64_t addr, int len, uint32_t id) {
  int rc = ef_vi_transmit_init(&k->vi, (ef_addr) addr, len, (ef_request_id) id);
  if( rc == 0 )
    k->tx_posted++;
  return rc;
}

static inline void kefvi_tx_push(kefvi* k) { ef_vi_transmit_push(&k->vi); }

static inline int kefvi_tx(kefvi* k, uint64_t addr, int len, uint32_t id) {
  int rc = ef_vi_transmit(&k->vi, (ef_addr) addr, len, (ef_request_id) id);
  if( rc == 0 )
    k->tx_posted++;
  return rc;
}

static inline int kefvi_tx_space(kefvi* k) { return ef_vi_transmit_space(&k->vi); }
static inline int kefvi_tx_cap(kefvi* k) { return ef_vi_transmit_capacity(&k->vi); }

/* ---- events ---- */

static inline void kefvi_rx_event(kefvi* k, kefvi_event* o, unsigned bytes, unsigned flags, uint32_t rq_id) {
  uint32_t i = k->rx_removed++ & k->rx_mask;
  uint32_t off = k->rx_off[i];
  uint64_t addr = k->rx_addr[i];
  uint32_t total, start = 0;
  if( !k->rx_cont ) {
    k->rx_cum = 0;
    start = (uint32_t) k->prefix;
  }
  /* ef_vi counts the prefix in the (cumulative) length; the SDK does not. */
  total = bytes > (unsigned) k->prefix ? bytes - (unsigned) k->prefix : 0;
  o->flags = (uint16_t) (flags & (EF_EVENT_FLAG_SOP | EF_EVENT_FLAG_CONT | EF_EVENT_FLAG_MULTICAST));
  o->rq_id = rq_id;
  o->bytes = total;
  o->len = (uint16_t) (total > k->rx_cum ? total - k->rx_cum : 0);
  o->addr = addr + start;
  o->seq = off + start;
  k->rx_cum = total;
  k->rx_cont = (flags & EF_EVENT_FLAG_CONT) != 0;
}

static inline void kefvi_tx_event(kefvi* k, kefvi_event* o, const ef_event* ev) {
  ef_request_id ids[EF_VI_TRANSMIT_BATCH];
  int n = ef_vi_transmit_unbundle(&k->vi, ev, ids), j;
  for( j = 0; j < n; ++j )
    k->tx_ids[k->tx_done++ & k->tx_mask] = (uint32_t) ids[j];
  o->count = (uint16_t) n;
  o->rq_id = n > 0 ? (uint32_t) ids[0] : 0;
  o->seq = k->tx_done;
}

/* kefvi_poll polls up to n (<= KEFVI_POLL_MAX) events and decodes them
 * into out: one cgo call per poll, nothing allocated. */
static int kefvi_poll(kefvi* k, kefvi_event* out, int n) {
  ef_event evs[KEFVI_POLL_MAX];
  int got, i;
  if( n > KEFVI_POLL_MAX )
    n = KEFVI_POLL_MAX;
  if( n < EF_VI_EVENT_POLL_MIN_EVS )
    return 0;
  got = ef_eventq_poll(&k->vi, evs, n);
  for( i = 0; i < got; ++i ) {
    const ef_event* ev = &evs[i];
    kefvi_event* o = &out[i];
    memset(o, 0, sizeof(*o));
    o->type = (uint16_t) EF_EVENT_TYPE(*ev);
    switch( EF_EVENT_TYPE(*ev) ) {
    case EF_EVENT_TYPE_RX:
      o->q = (uint16_t) EF_EVENT_RX_Q_ID(*ev);
      kefvi_rx_event(k, o, EF_EVENT_RX_BYTES(*ev), ev->rx.flags, EF_EVENT_RX_RQ_ID(*ev));
      k->c.rx_events++;
      break;
    case EF_EVENT_TYPE_RX_DISCARD:
      o->q = (uint16_t) EF_EVENT_RX_DISCARD_Q_ID(*ev);
      o->sub = (uint16_t) EF_EVENT_RX_DISCARD_TYPE(*ev);
      kefvi_rx_event(k, o, EF_EVENT_RX_DISCARD_BYTES(*ev), ev->rx_discard.flags, EF_EVENT_RX_DISCARD_RQ_ID(*ev));
      if( o->sub == EF_EVENT_RX_DISCARD_CSUM_BAD || o->sub == EF_EVENT_RX_DISCARD_INNER_CSUM_BAD )
        k->c.rx_discard_csum++;
      else if( o->sub == EF_EVENT_RX_DISCARD_TRUNC )
        k->c.rx_discard_trunc++;
      else
        k->c.rx_discard_other++;
      break;
    case EF_EVENT_TYPE_RX_NO_DESC_TRUNC:
      o->q = (uint16_t) EF_EVENT_RX_NO_DESC_TRUNC_Q_ID(*ev);
      k->rx_cont = 0; /* drop the rest of the frame up to the next SOP */
      break;
    case EF_EVENT_TYPE_TX:
      o->q = (uint16_t) EF_EVENT_TX_Q_ID(*ev);
      kefvi_tx_event(k, o, ev);
      k->c.tx_completed += o->count;
      break;
    case EF_EVENT_TYPE_TX_ERROR:
      o->q = (uint16_t) EF_EVENT_TX_ERROR_Q_ID(*ev);
      o->sub = (uint16_t) EF_EVENT_TX_ERROR_TYPE(*ev);
      kefvi_tx_event(k, o, ev);
      k->c.tx_errors += o->count;
      break;
    case EF_EVENT_TYPE_SW:
      o->sub = (uint16_t) EF_EVENT_SW_DATA(*ev);
      k->c.sw_events++;
      break;
    case EF_EVENT_TYPE_OFLOW:
      k->c.oflows++;
      break;
    case EF_EVENT_TYPE_RESET:
      k->c.resets++;
      break;
    default:
      /* Types the SDK never asks for (merged RX, timestamps, TX
       * alternatives, EFCT RX_REF): passed on with their number only. */
      break;
    }
  }
  return got;
}

static inline int kefvi_has_event(kefvi* k) { return ef_eventq_has_event(&k->vi); }
static inline int kefvi_evq_cap(kefvi* k) { return ef_eventq_capacity(&k->vi); }

static inline int kefvi_prime(kefvi* k) {
  return ef_vi_prime(&k->vi, k->dh, ef_eventq_current(&k->vi));
}

static inline int kefvi_wait(kefvi* k, long usec) {
  struct timeval tv;
  tv.tv_sec = usec / 1000000;
  tv.tv_usec = usec % 1000000;
  return ef_eventq_wait(&k->vi, k->dh, ef_eventq_current(&k->vi), usec < 0 ? NULL : &tv);
}

static inline int kefvi_put(kefvi* k, unsigned bits) {
  return ef_eventq_put(ef_vi_resource_id(&k->vi), k->dh, bits);
}

/* kefvi_stats reads ef_vi_stats_query into the four EF10 counters the SDK
 * reports (by name, so a layout change only loses a counter). */
static int kefvi_stats(kefvi* k, uint64_t out[4]) {
  const ef_vi_stats_layout* l;
  unsigned char buf[256];
  int rc, i;
  memset(out, 0, 4 * sizeof(uint64_t));
  if( (rc = ef_vi_stats_query_layout(&k->vi, &l)) < 0 )
    return rc;
  if( l->evsl_data_size > (int) sizeof(buf) )
    return -E2BIG;
  if( (rc = ef_vi_stats_query(&k->vi, k->dh, buf, 0)) < 0 )
    return rc;
  for( i = 0; i < l->evsl_fields_num; ++i ) {
    const ef_vi_stats_field_layout* f = &l->evsl_fields[i];
    uint64_t v = 0;
    int slot = -1;
    if( f->evsfl_offset < 0 || f->evsfl_size <= 0 || f->evsfl_size > 8 ||
        f->evsfl_offset + f->evsfl_size > l->evsl_data_size )
      continue;
    memcpy(&v, buf + f->evsfl_offset, (size_t) f->evsfl_size);
    if( strstr(f->evsfl_name, "no desc") != NULL )
      slot = 0;
    else if( strstr(f->evsfl_name, "CRC") != NULL )
      slot = 1;
    else if( strstr(f->evsfl_name, "trunc") != NULL )
      slot = 2;
    else if( strstr(f->evsfl_name, "abort") != NULL )
      slot = 3;
    if( slot >= 0 )
      out[slot] = v;
  }
  return 0;
}

/* kefvi_bench_vi sets up k->vi as an EF10 VI over host memory with an empty
 * event queue and no rings, so the poll wrapper can be measured (and
 * exercised) without a NIC: ef_eventq_poll then runs libciul's real EF10
 * poll over a ring that holds no event. Uses ef_vi's initialisation calls
 * from etherfabric/internal/internal.h. */
static int kefvi_bench_vi(kefvi* k, void** state_out, void** ring_out) {
  int rc, bytes;
  ef_vi_state* st;
  void* ring;
  bytes = ef_vi_calc_state_bytes(0, 0);
  st = calloc(1, (size_t) bytes + 4096);
  ring = aligned_alloc(4096, 4096);
  if( st == NULL || ring == NULL ) {
    free(st);
    free(ring);
    return -ENOMEM;
  }
  rc = ef_vi_init(&k->vi, EF_VI_ARCH_EF10, 0, 0, EF_VI_FLAGS_DEFAULT, 0, st);
  if( rc < 0 ) {
    free(st);
    free(ring);
    return rc;
  }
  ef_vi_init_evq(&k->vi, 512, ring, 512);
  ef_vi_init_state(&k->vi);
  ef_vi_reset_evq(&k->vi, 1);
  k->rx_mask = 0;
  k->tx_mask = 0;
  *state_out = st;
  *ring_out = ring;
  return 0;
}

#endif
