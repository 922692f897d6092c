module github.com/wschat/wschat/services/reclaim

go 1.26.8
