module github.com/wschat/wschat/services/relayer

go 1.26.8

require (
	github.com/coder/websocket v1.8.15
	github.com/prometheus/client_golang v1.25.0
	github.com/prometheus/client_model v0.6.3
	github.com/wschat/wschat/services/protocol v0.0.0
	github.com/wschat/wschat/services/reclaim v0.0.0
	github.com/wschat/wschat/services/settings v0.0.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/caarlos0/env/v11 v11.4.2 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/kylelemons/godebug v1.1.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/wschat/wschat/services/protocol => ../protocol

replace github.com/wschat/wschat/services/reclaim => ../reclaim

replace github.com/wschat/wschat/services/settings => ../settings
