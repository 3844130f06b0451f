cwlVersion: v1.2
class: Workflow
doc: The steps of wf.cwl, in the jobnest busybox image.
requirements:
  DockerRequirement: {dockerPull: "jobnest/busybox:latest"}
inputs:
  text: File
outputs:
  combined: {type: File, outputSource: combine/combined}
  greeting: {type: File, outputSource: combine/greeting}
steps:
  upper:
    run: upper.cwl
    in: {text: text}
    out: [upper]
  sort:
    run: sort.cwl
    in: {lines: upper/upper}
    out: [sorted]
  combine:
    run: combine.cwl
    in: {first: sort/sorted, second: text}
    out: [combined, greeting]
