import path from 'node:path';
import Database from 'better-sqlite3';

/** Whether a process holds a lock of `kind` ('gc', 'backup', 'source:NAME') in the catalogue of the repository at `repo`. */
export function lockHeld(repo: string, kind: string): boolean {
  let db: Database.Database;
  try {
    db = new Database(path.join(repo, 'catalogue.sqlite'), { readonly: true, fileMustExist: true });
  } catch {
    return false;
  }
  try {
    return db.prepare('SELECT 1 FROM locks WHERE kind = ?').get(kind) !== undefined;
  } catch {
    return false; // the table may not exist yet
  } finally {
    db.close();
  }
}
