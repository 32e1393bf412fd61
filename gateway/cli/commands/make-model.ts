// `paraserve make-model`: writes a seeded random-weight checkpoint of a real architecture and
// size (tiny presets for tests, 1B–13B shapes for benchmarks); same seed, same bytes.
import { Option, type Command } from 'commander';
import type { DType } from '../../../worker/native/addon-types.js';
import { CliError } from '../errors.js';
import { jsonOption, parseIntIn, resolvePath } from '../options.js';
import { formatBytes, formatTable, printJson, printText, startProgress } from '../output.js';

interface MakeModelFlags {
  preset: string;
  out: string;
  seed: number;
  dtype?: DType;
  sharded?: boolean;
  json?: boolean;
}

export function registerMakeModelCommand(program: Command): void {
  program
    .command('make-model')
    .description('write a seeded random-weight checkpoint (safetensors, config, tokenizer) of a preset architecture')
    .addOption(new Option('--preset <name>', 'preset: tiny-llama2, tiny-llama3, tiny-mistral, tiny-qwen2, demo, llama-1b … llama-13b').makeOptionMandatory())
    .addOption(new Option('--out <dir>', 'directory to write').makeOptionMandatory())
    .addOption(new Option('--seed <n>', 'random seed').default(0).argParser(parseIntIn(0, 2 ** 32 - 1)))
    .addOption(new Option('--dtype <dtype>', "weight dtype (default: the preset's, f16 or bf16)").choices(['f16', 'bf16', 'f32']))
    .addOption(new Option('--sharded', 'split the weights over several safetensors files with an index'))
    .addOption(jsonOption())
    .action(async (flags: MakeModelFlags) => {
      const { MODEL_PRESETS, writeSyntheticModel } = await import('../../../worker/models/synthetic.js');
      const preset = Object.hasOwn(MODEL_PRESETS, flags.preset) ? MODEL_PRESETS[flags.preset] : undefined;
      if (preset === undefined) {
        throw new CliError(`unknown preset ${flags.preset} (choose from: ${Object.keys(MODEL_PRESETS).join(', ')})`);
      }
      const dtype = flags.dtype ?? preset.defaultDType;
      const dir = resolvePath(flags.out);
      const progress = startProgress('generating', 'bytes');
      let files: { path: string; size: number }[];
      try {
        ({ files } = await writeSyntheticModel(
          { dir, preset: flags.preset, seed: flags.seed, dtype, sharded: flags.sharded === true },
          (done, total) => progress.update(done, total),
        ));
      } finally {
        progress.stop();
      }
      const totalBytes = files.reduce((sum, f) => sum + f.size, 0);
      if (flags.json === true) {
        printJson({ dir, preset: flags.preset, seed: flags.seed, dtype, sharded: flags.sharded === true, files, totalBytes });
        return;
      }
      printText(`wrote ${flags.preset} (seed ${flags.seed}, ${dtype}) to ${dir}\n\n`);
      printText(formatTable(['FILE', 'SIZE'], files.map((f) => [f.path, formatBytes(f.size)])));
      printText(`\ntotal ${formatBytes(totalBytes)} in ${files.length} files\n`);
    });
}
