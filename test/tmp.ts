import { parseConfig } from "../src/ConfigDocument.js"
import { Either, JSONSchema } from "effect"
import { MeshConfig } from "../schemas/Config.js"
const cases = [
`mesh: { name: lab }
services:
  - name: echo
    port: 70000
    protocol: htp
    endpoints: [{address: 127.0.0.1, port: 1, wieght: 3}]
    healthCheck: { type: grpc, interval: 10 parsecs }
  - name: echo
    port: 80
policies:
  traffic:
    - name: x
      service: echo
      routes:
        - destinations: [ {service: echo, weight: 0}, {service: echo-v3} ]
`,
`mesh: { name: lab }
services:
  - name: echo
    port: 80
  - name: echo
    port: 81
policies:
  traffic:
    - name: x
      service: echo
      routes:
        - destinations: [ {service: echo}, {service: echo-v3} ]
`,
`mesh: { name: lab
 foo: : bar`,
`mesh: {name: lab}
mesh: {name: x}`,
`mesh: {name: lab}
services:
  - name: a
    port: 1
    healthCheck: { type: foo }
  - name: b
    port: 1
    healthCheck: { type: http, interval: -1s, path: x }
`,
]
for (const c of cases) {
  const r = parseConfig(c, "mesh.yaml")
  console.log(Either.isLeft(r) ? r.left.message : JSON.stringify(r.right))
}
const ok = parseConfig("mesh: {name: lab}\nservices: [{name: a, port: 80, endpoints: [{address: 1.2.3.4}]}]", "x")
console.log(JSON.stringify(ok, null, 0))
console.log(JSON.stringify(JSONSchema.make(MeshConfig)).slice(0, 3000))
