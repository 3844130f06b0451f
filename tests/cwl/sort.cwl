cwlVersion: v1.2
class: CommandLineTool
doc: Sorts the lines of a file into sorted.txt.
requirements:
  ResourceRequirement: {coresMin: 0.5, ramMin: 200}
baseCommand: [sort, -o, sorted.txt]
inputs:
  lines: {type: File, inputBinding: {position: 1}}
outputs:
  sorted: {type: File, outputBinding: {glob: sorted.txt}}
