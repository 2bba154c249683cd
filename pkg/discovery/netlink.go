package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netlink is the real Events source: RTNLGRP_LINK messages (link added,
// removed, renamed, up/down, carrier) from the kernel.
type Netlink struct {
	// NS is the namespace to watch; nil means the agent's own.
	NS     *netns.NsHandle
	Logger *slog.Logger
}

// Subscribe implements Events. The netlink socket is close-on-exec and is
// closed when ctx is done or the kernel side fails.
func (n Netlink) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	log := n.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	opts := netlink.LinkSubscribeOptions{
		Namespace: n.NS,
		ErrorCallback: func(err error) {
			if ctx.Err() == nil { // closing the socket at shutdown also reports an error
				log.Warn("netlink link subscription", "err", err)
			}
		},
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return nil, fmt.Errorf("subscribe to netlink link events: %w", err)
	}
	out := make(chan struct{}, 1)
	unhook := context.AfterFunc(ctx, stop)
	go func() {
		defer close(out)
		defer unhook()
		defer stop() // the socket closes when updates closes for any reason
		for range updates {
			select {
			case out <- struct{}{}:
			default: // one pending notification is enough
			}
		}
	}()
	return out, nil
}
