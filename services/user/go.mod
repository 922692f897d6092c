module github.com/wschat/wschat/services/user

go 1.26.8

require (
	github.com/caarlos0/env/v11 v11.4.2 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/wschat/wschat/services/protocol v0.0.0
	github.com/wschat/wschat/services/reclaim v0.0.0
	golang.org/x/net v0.60.0
)

replace github.com/wschat/wschat/services/protocol => ../protocol

replace github.com/wschat/wschat/services/reclaim => ../reclaim
