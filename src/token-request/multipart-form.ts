/** A parsed multipart body, by field name, keeping repeats so that validation can refuse them. */
export interface MultipartForm {
  fields: Map<string, string[]>;
  files: Map<string, Buffer[]>;
  /** Bytes of every value and file, for the fingerprint and the logs. */
  totalBytes: number;
}
