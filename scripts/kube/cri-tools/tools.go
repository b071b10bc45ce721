//go:build tools

// The imports of sigs.k8s.io/cri-tools/cmd/critest's cri_test.go (the package has no non-test files, so it cannot
// be a tool itself): with them here `go mod tidy` keeps every module `go test -c` of that package needs.
package tools

import (
	_ "github.com/onsi/ginkgo/v2"
	_ "github.com/onsi/ginkgo/v2/types"
	_ "github.com/onsi/gomega"
	_ "sigs.k8s.io/cri-tools/pkg/benchmark"
	_ "sigs.k8s.io/cri-tools/pkg/common"
	_ "sigs.k8s.io/cri-tools/pkg/framework"
	_ "sigs.k8s.io/cri-tools/pkg/validate"
	_ "sigs.k8s.io/cri-tools/pkg/version"
)
