/**
 * A form's fields once what it edits has been read again (a save refused because the provider
 * profile changed elsewhere since it was loaded): a field still as it was loaded takes the new
 * value, a field typed in keeps what was typed. Saving again then applies the person's own edits
 * to the new version; sending the whole form as it was would quietly undo the other change in the
 * fields nobody touched. Imports nothing.
 */
export function rebase<T extends object>(draft: T, loaded: Readonly<T>, now: Readonly<T>): void {
  for (const key of Object.keys(now) as (keyof T)[]) {
    if (draft[key] === loaded[key]) draft[key] = now[key];
  }
}
