;; missing-import-component.wasm: a WASI p2 command component that also imports two interfaces no host of this
;; project provides (example:unavailable/*), so loading it must fail naming both.
(component
  (import "wasi:cli/environment@0.2.0" (instance $environment
    (export "get-arguments" (func (result (list string))))))
  (import "example:unavailable/frobnicator@1.0.0" (instance $frob
    (export "frobnicate" (func (param "x" u32) (result u32)))))
  (import "example:unavailable/other@1.0.0" (instance $other
    (export "poke" (func))))
  (core module $main (func (export "run") (result i32) (i32.const 0)))
  (core instance $main (instantiate $main))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
