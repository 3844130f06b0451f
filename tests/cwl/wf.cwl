cwlVersion: v1.2
class: Workflow
doc: Upper-case a text, sort it, and put the original after the sorted copy.
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
