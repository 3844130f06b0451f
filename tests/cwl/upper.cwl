cwlVersion: v1.2
class: CommandLineTool
doc: Upper-cases a text (stdin to stdout).
requirements:
  ResourceRequirement: {coresMin: 0.25, ramMin: 100}
baseCommand: [tr, a-z, A-Z]
stdin: $(inputs.text.path)
stdout: upper.txt
inputs:
  text: File
outputs:
  upper: stdout
