cwlVersion: v1.2
class: CommandLineTool
doc: Says why on stderr and exits 3.
baseCommand: [sh, -c, 'echo "no such sample: $0" >&2; exit 3']
inputs:
  sample: {type: string, inputBinding: {position: 1}}
outputs: []
