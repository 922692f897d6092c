module github.com/wschat/wschat/integration

go 1.26.8

require (
	github.com/wschat/wschat/services/protocol v0.0.0
	github.com/wschat/wschat/services/relayer v0.0.0
	github.com/wschat/wschat/services/user v0.0.0
)

replace github.com/wschat/wschat/services/protocol => ../services/protocol

replace github.com/wschat/wschat/services/user => ../services/user

replace github.com/wschat/wschat/services/relayer => ../services/relayer
