// Command wsload is wschat's load generator; see package load and
// integration/load/README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wschat/wschat/integration/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) == 2 && os.Args[1] == "table" {
		// wsload table < results.jsonl: the Markdown table of the runs.
		err = load.WriteTable(os.Stdin, os.Stdout)
	} else {
		err = load.Run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsload:", err)
		os.Exit(1)
	}
}
