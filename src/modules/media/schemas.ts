import { Type } from 'typebox';

/** The request and answer shapes of the media route (validation and the OpenAPI document). */

export const MediaParams = Type.Object({ token: Type.String({ minLength: 1, maxLength: 200 }) });

/** The file itself, whole (200) or a byte range of it (206). */
export const MediaBytes = Type.Unsafe({ type: 'string', format: 'binary' });

export const MediaRedirect = Type.Null({
  description:
    'Redirect mode (MEDIA_REDIRECT): the checks passed; Location is a short-lived link to the bytes in the media store, which honours Range',
});
