module github.com/wschat/wschat/services/protocol

go 1.26.8
