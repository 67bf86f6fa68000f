// Built in GOPATH mode (GO111MODULE=off) over Debian's Go sources by
// xtask/src/chart/render.rs, never in module mode: this file only marks the package as
// module-aware, which is what makes GOPATH mode resolve sprig's `/v3` import path.
module chart-render

go 1.19
