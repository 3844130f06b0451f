cwlVersion: v1.2
class: CommandLineTool
doc: Writes a greeting from the environment, then both files one after the other.
requirements:
  EnvVarRequirement:
    envDef: {GREETING: hello from $(inputs.first.basename)}
baseCommand: [sh, -c, 'echo "$GREETING" > greeting.txt && cat "$0" "$1" > combined.txt']
inputs:
  first: {type: File, inputBinding: {position: 1}}
  second: {type: File, inputBinding: {position: 2}}
outputs:
  combined: {type: File, outputBinding: {glob: combined.txt}}
  greeting: {type: File, outputBinding: {glob: greeting.txt}}
